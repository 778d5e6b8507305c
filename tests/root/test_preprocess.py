"""Preprocessing: transforms against independent arithmetic, and compute-what-you-use."""
from __future__ import annotations

import json

import numpy as np
import pytest

import _trim
from _trim import Ragged
from _trim.records.layout import RecordLayout
from _trim.records.program_reference import elementwise
from rootproc.preprocess.preprocessor import Preprocessor, hash_ids
from rootproc.settings import RootSettings, config_from_dict
from signatures.runtime.settings import add_arguments, load
from signatures.schema import FeatureSchema

from .world import SCHEMA, bucket, expected_features, raw_data


@pytest.fixture(scope="module")
def schema():
    return FeatureSchema.from_dict(SCHEMA)


def records_from_raw(layout: RecordLayout, raw: dict) -> dict:
    cols = {}
    for name in layout.fields:
        if name + ".values" in raw:
            cols[name] = Ragged(raw[name + ".values"], raw[name + ".offsets"])
        else:
            cols[name] = raw[name]
    recs = layout.encode_many(len(raw["id"]), cols)
    return dict(zip(raw["id"].tolist(), recs))


def test_hash_matches_the_documented_function():
    ids = np.array([0, 1, -1, 42, (1 << 63) - 1, -(1 << 63), 1 << 40], dtype=np.int64)
    out = np.empty(len(ids), dtype=np.int64)
    for buckets in (1, 7, 1000, (1 << 62) + 3):
        hash_ids(ids, buckets, out)
        assert out.tolist() == [bucket(x, buckets) for x in ids.tolist()]
        assert (out >= 0).all()


def test_every_transform_against_reference(schema):
    users, cands = raw_data()
    layouts = {s: RecordLayout.from_schema(schema, s) for s in ("user", "candidate")}
    urecs = records_from_raw(layouts["user"], users)
    crecs = records_from_raw(layouts["candidate"], cands)
    pre = Preprocessor(schema, None, layouts)
    user = int(users["id"][2])
    cand_ids = cands["id"][[3, 1, 4, 1, 5, 9, 2, 6]]
    batch = pre.build([urecs[user]], [crecs[c] for c in cand_ids.tolist()])
    want = expected_features(users, cands, user, cand_ids)
    got = _trim.decode(batch.buffer)
    assert list(got) == schema.names
    for name in schema.names:
        if isinstance(want[name], tuple):
            np.testing.assert_array_equal(got[name].values, want[name][0], err_msg=name)
            np.testing.assert_array_equal(got[name].offsets, want[name][1], err_msg=name)
        else:
            np.testing.assert_allclose(got[name].reshape(want[name].shape), want[name],
                                       rtol=1e-6, atol=1e-6, err_msg=name)


def test_computes_only_the_union_plus_cross_inputs(schema):
    layouts = {s: RecordLayout.from_schema(schema, s) for s in ("user", "candidate")}
    pre = Preprocessor(schema, ["user_pin_affinity", "pin_ctr_raw"], layouts)
    assert pre.names == ["user_emb", "pin_ctr_raw", "pin_emb", "user_pin_affinity"]
    assert pre.raw_fields == {"user": ["user_emb"], "candidate": ["ctr_7d", "pin_emb"]}
    batch = pre.build([layouts["user"].default_record], [layouts["candidate"].default_record] * 3)
    assert batch.layout.names == pre.names and batch.n_rows == 3


def test_store_without_a_field_gives_defaults_and_shape_mismatch_is_refused(schema):
    layouts = {s: RecordLayout.from_schema(schema, s) for s in ("user", "candidate")}
    # A store written before pin_age_days and user_recent_pins existed.
    old = {"user": RecordLayout("user", [f for f in layouts["user"].fields.values()
                                         if f.name != "user_recent_pins"]),
           "candidate": RecordLayout("candidate", [f for f in layouts["candidate"].fields.values()
                                                   if f.name != "pin_age_days"])}
    pre = Preprocessor(schema, ["pin_age_days", "user_recent_pins"], old)
    assert sorted(pre.absent_features) == ["pin_age_days", "user_recent_pins"]
    batch = pre.build([old["user"].default_record], [old["candidate"].default_record] * 2)
    assert batch.column("pin_age_days").tolist() == [7.0, 7.0]
    assert batch.column("user_recent_pins").offsets.tolist() == [0, 0]
    wrong = {"user": layouts["user"], "candidate": RecordLayout("candidate", [
        f if f.name != "pin_emb" else type(f)("pin_emb", "float32", 4, True)
        for f in layouts["candidate"].fields.values()])}
    with pytest.raises(ValueError, match="pin_emb"):
        Preprocessor(schema, ["pin_emb"], wrong)


def test_config_file_flags_and_validation(tmp_path):
    import argparse
    data = {"schema": "s.json", "feature_store": "st", "bundle": "b.json", "bind": "ipc:///tmp/x",
            "leaves": [{"name": "leaf-0", "endpoints": "tcp://h:1", "models": ["ctr@3"]}],
            "cache": {"size": 10, "ttl_s": 5}, "trim": "off"}
    path = tmp_path / "root.json"
    path.write_text(json.dumps(data))
    parser = argparse.ArgumentParser()
    add_arguments(parser, RootSettings)
    cfg = load(RootSettings, parser.parse_args(["--config", str(path), "--compression", "lz4",
                                              "--metrics-port", "0"]))
    assert cfg.schema == str(tmp_path / "s.json") and cfg.bind == ("ipc:///tmp/x",)
    assert cfg.leaves[0].endpoints == ("tcp://h:1",) and cfg.leaves[0].models == ("ctr@3",)
    assert (cfg.cache.size, cfg.cache.ttl_s, cfg.trim, cfg.compression) == (10, 5, "off", "lz4")
    assert cfg.metrics_port is None
    cfg = load(RootSettings, parser.parse_args(["--config", str(path), "--config-store", "cs",
                                              "--leaf", "a=ipc:///x,ipc:///y"]))
    assert cfg.bundle is None and cfg.leaves[0].endpoints == ("ipc:///x", "ipc:///y")
    with pytest.raises(ValueError, match="unknown keys"):
        config_from_dict({**data, "bogus": 1})
    with pytest.raises(ValueError, match="trim must be one of"):
        config_from_dict({**data, "trim": "maybe"}).validate()
    with pytest.raises(ValueError, match="exactly one of"):
        config_from_dict({k: v for k, v in data.items() if k != "bundle"}).validate()


def test_grouped_scalars_match_the_per_feature_path():
    from rootproc.featurestore.synth import synth_chunks
    ops = [{"op": "identity"}, {"op": "log1p"}, {"op": "clip", "lo": 0.1, "hi": 7.3},
           {"op": "standardize", "mean": 0.3, "std": 1.7}]
    feats = []
    for i in range(12):
        feats.append({"name": f"c{i}", "dtype": "float32" if i % 3 else "float64",
                      "source": "candidate", "transform": ops[i % 4]})
        feats.append({"name": f"u{i}", "dtype": "float32", "source": "user", "transform": ops[i % 4]})
    for i in range(4):
        feats.append({"name": f"h{i}", "dtype": "int64" if i % 2 else "int32",
                      "source": "candidate", "transform": {"op": "hash", "buckets": 10 + i}})
    feats.append({"name": "r", "dtype": "int64", "kind": "ragged", "source": "candidate",
                  "transform": {"op": "hash", "buckets": 9}})
    schema = FeatureSchema.from_dict({"format": 1, "features": feats})
    layouts = {s: RecordLayout.from_schema(schema, s) for s in ("user", "candidate")}
    (_, urecs), = synth_chunks(schema, layouts["user"], 1, seed=1)
    (_, crecs), = synth_chunks(schema, layouts["candidate"], 50, seed=1)
    grouped = Preprocessor(schema, None, layouts, impl="reference")
    ref = grouped.program
    assert len(ref.groups) >= 4 and len(ref.steps) == 1
    single = Preprocessor(schema, None, layouts, impl="reference").program
    single.groups = []
    single.steps = [(f, elementwise(f.transform["op"], f.transform)) for f in single.pre.features]
    single.step_fields = {s: sorted(layouts[s].fields) for s in ("user", "candidate")}
    a, b = grouped.build(urecs[:1], crecs), single.build(urecs[:1], crecs)
    assert bytes(a.buffer) == bytes(b.buffer)
    kernel = Preprocessor(schema, None, layouts, impl="kernel").build(urecs[:1], crecs)
    assert bytes(kernel.buffer) == bytes(a.buffer)
    hashed = _trim.decode(a.buffer)["h3"]
    raw = layouts["candidate"].decode_many(crecs)["h3"]
    assert hashed.tolist() == [bucket(x, 13) for x in raw.tolist()]


@pytest.mark.parametrize("used", [
    ["pin_ctr_7d"],                                   # every ragged feature left out
    ["pin_ctr_raw", "user_recent_pins"],              # the user's list in, the candidates' out
    [f["name"] for f in SCHEMA["features"]],          # nothing left out
])
def test_untrimmed_counts_every_schema_feature_as_trim_off_sends_it(schema, used):
    """The savings metric's counterfactual: the message every feature would
    make for the request a trimmed batch was built for, ragged lists of
    features the batch left out counted from the records."""
    from rootproc.preprocess.untrimmed import Untrimmed

    users, cands = raw_data()
    layouts = {s: RecordLayout.from_schema(schema, s) for s in ("user", "candidate")}
    urecs = records_from_raw(layouts["user"], users)
    crecs = records_from_raw(layouts["candidate"], cands)
    full = Preprocessor(schema, None, layouts)
    pre = Preprocessor(schema, used, layouts)
    untrimmed = Untrimmed(pre, full)
    for user, picks in ((int(users["id"][1]), [3, 1, 4, 1, 5, 9, 2, 6]), (int(users["id"][0]), [])):
        u, c = [urecs[user]], [crecs[k] for k in cands["id"][picks].tolist()]
        batch, every = pre.build(u, c), full.build(u, c)
        want = _trim.encoded_nbytes(_trim.compile_plan(every.layout, every.layout.names), every)
        assert untrimmed.nbytes(batch, untrimmed.counts(u, c)) == want


def test_untrimmed_counts_a_store_without_a_ragged_field_by_its_default(schema):
    from rootproc.preprocess.untrimmed import Untrimmed

    layouts = {s: RecordLayout.from_schema(schema, s) for s in ("user", "candidate")}
    fields = [f if f.name != "pin_words" else type(f)("other", "int32", 1, False, True)
              for f in layouts["candidate"].fields.values()]
    old = {"user": layouts["user"], "candidate": RecordLayout("candidate", fields)}
    full = Preprocessor(schema, None, old)
    pre = Preprocessor(schema, ["pin_ctr_7d"], old)
    u, c = [old["user"].default_record], [old["candidate"].default_record] * 5
    every = full.build(u, c)
    want = _trim.encoded_nbytes(_trim.compile_plan(every.layout, every.layout.names), every)
    untrimmed = Untrimmed(pre, full)
    assert untrimmed.nbytes(pre.build(u, c), untrimmed.counts(u, c)) == want
