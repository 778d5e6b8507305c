import json

import pytest

from signatures.schema import FeatureSchema


def test_load_fields(schema):
    f = schema.features["pin_ctr_7d"]
    assert (f.dtype, f.shape, f.ragged, f.source, f.raw, f.raw_name) == (
        "float32", (), False, "candidate", "ctr_7d", "ctr_7d")
    assert schema.features["user_emb"].per_request
    assert schema.features["user_recent_pins"].ragged
    assert schema["user_pin_affinity"].inputs == ("user_emb", "pin_emb")
    spec = schema["user_emb"].column_spec()
    assert (spec.name, spec.shape, spec.per_request) == ("user_emb", (8,), True)
    assert list(schema.features)[0] == "user_emb"


def test_layout_in_schema_order(schema):
    assert schema.layout().names == list(schema.features)
    assert schema.layout(["pin_emb", "user_emb"]).names == ["user_emb", "pin_emb"]
    with pytest.raises(ValueError, match="nope"):
        schema.layout(["nope"])


def test_closure_adds_cross_inputs(schema):
    assert schema.closure(["user_pin_affinity", "pin_ctr_7d"]) == [
        "user_emb", "pin_ctr_7d", "pin_emb", "user_pin_affinity"]
    assert schema.closure([]) == []


def test_fingerprint_stable_and_sensitive(schema_dict):
    a = FeatureSchema.from_dict(schema_dict)
    b = FeatureSchema.from_dict(json.loads(json.dumps(schema_dict)))
    assert a.fingerprint == b.fingerprint
    schema_dict["features"][1]["transform"] = {"op": "identity"}
    assert FeatureSchema.from_dict(schema_dict).fingerprint != a.fingerprint


def test_toml(tmp_path):
    p = tmp_path / "s.toml"
    p.write_text('format = 1\n[[features]]\nname = "a"\ndtype = "float32"\nsource = "candidate"\n')
    s = FeatureSchema.load(p)
    assert s["a"].shape == () and s["a"].transform == {"op": "identity"}


def test_all_problems_reported_at_once():
    bad = {"format": 2, "features": [
        {"name": "a", "dtype": "complex64", "source": "candidate"},
        {"name": "b", "dtype": "float32", "source": "elsewhere"},
        {"name": "c", "dtype": "float32", "kind": "ragged", "shape": [3], "source": "user"},
        {"name": "d", "dtype": "float32", "source": "cross", "raw": "x",
         "transform": {"op": "dot", "inputs": ["a", "zz"]}},
        {"name": "e", "dtype": "float32", "source": "user", "transform": {"op": "clip", "lo": 5, "hi": 1}},
        {"name": "f", "dtype": "float32", "source": "user", "transform": {"op": "hash", "buckets": 0}},
        {"name": "g", "dtype": "float32", "source": "user",
         "transform": {"op": "standardize", "mean": 0, "std": 0}},
        {"name": "h", "dtype": "float32", "source": "user", "colour": "red"},
        {"name": "h", "dtype": "float32", "source": "user"},
        {"name": "i.values", "dtype": "float32", "source": "user"},
        {"name": "j", "dtype": "float32", "source": "user", "transform": {"op": "sqrt"}},
        {"name": "k", "dtype": "float32", "source": "user", "default": "zero"},
        {"name": "l", "dtype": "float32", "shape": [0], "source": "user"},
    ]}
    with pytest.raises(ValueError) as e:
        FeatureSchema.from_dict(bad, path="s.json")
    msg = str(e.value)
    for needle in ["format must be 1", "'a': dtype 'complex64'", "'b': source 'elsewhere'",
                   "'c': a ragged feature", "'d': a cross feature is computed", "clip needs numbers",
                   "hash buckets must be", "standardize needs", "unknown keys colour",
                   "'i.values': name may not", "transform.op 'sqrt'", "'k': default must be",
                   "'l': shape must be"]:
        assert needle in msg, needle
    assert msg.startswith("feature schema s.json:")


def test_cross_checks():
    base = [{"name": "u", "dtype": "float32", "shape": [4], "source": "user"},
            {"name": "p", "dtype": "float32", "shape": [3], "source": "candidate"},
            {"name": "r", "dtype": "int64", "kind": "ragged", "source": "user"}]
    for inputs, needle in [(["u", "p"], "different widths 4 and 3"),
                           (["u", "r"], "'r' must be a dense float vector"),
                           (["u", "missing"], "'missing' is not in the schema"),
                           (["u"], "list of two feature names")]:
        d = {"format": 1, "features": base + [
            {"name": "x", "dtype": "float32", "source": "cross",
             "transform": {"op": "dot", "inputs": inputs}}]}
        with pytest.raises(ValueError, match=needle):
            FeatureSchema.from_dict(d)
    with pytest.raises(ValueError, match="dot is for cross"):
        FeatureSchema.from_dict({"format": 1, "features": [
            {"name": "x", "dtype": "float32", "source": "cross"}]})


def test_unreadable_and_invalid(tmp_path):
    with pytest.raises(ValueError, match="cannot read"):
        FeatureSchema.load(tmp_path / "missing.json")
    p = tmp_path / "bad.json"
    p.write_text("{")
    with pytest.raises(ValueError, match="not valid JSON"):
        FeatureSchema.load(p)
