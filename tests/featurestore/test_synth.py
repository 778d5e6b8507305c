"""Synthetic data: deterministic, independent of chunking and of other fields, shaped like production's."""
from __future__ import annotations

import json

import lz4.block
import numpy as np
import pytest

from _trim.records import writer_reference
from _trim.records.layout import RecordLayout
from rootproc.demo.schema_gen import demo_schema
from rootproc.featurestore import cli as store_cli
from rootproc.featurestore import open_feature_store, synth
from signatures.schema import FeatureSchema
from tests.root.world import SCHEMA


@pytest.fixture(scope="module")
def demo():
    """The demo's schema at a tenth of its size, and 2,000 candidates of it."""
    schema = FeatureSchema.from_dict(demo_schema(0, 0.1))
    layout = RecordLayout.from_schema(schema, "candidate")
    records = synth.Synthesizer(schema, layout, 0).records(np.arange(2000))
    return schema, layout, layout.decode_many(list(records))


def test_synth_is_deterministic(tmp_path):
    schema_path = tmp_path / "schema.json"
    schema_path.write_text(json.dumps(SCHEMA))
    dumps = []
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        assert store_cli.main(["synth", "--feature-store", str(tmp_path / name), "--schema",
                               str(schema_path), "--users", "50", "--candidates", "3000",
                               "--seed", str(seed), "--no-progress"]) == 0
        with open_feature_store(tmp_path / name) as store:
            dumps.append(store.get_many({"user": list(range(50)), "candidate": list(range(3000))}))
    assert dumps[0] == dumps[1] and dumps[0]["candidate"] != dumps[2]["candidate"]


def test_a_value_depends_on_its_entity_and_field_alone(monkeypatch):
    schema = FeatureSchema.from_dict(SCHEMA)
    layout = RecordLayout.from_schema(schema, "candidate")
    whole = list(synth.Synthesizer(schema, layout, 9).records(np.arange(1000)))
    monkeypatch.setattr(synth, "CHUNK_NBYTES", 7 * layout.fixed_nbytes)   # chunks of 7 rows
    monkeypatch.setattr(writer_reference, "BLOCK_NBYTES", 3 * layout.fixed_nbytes)
    chunked = [r for _, recs in synth.Synthesizer(schema, layout, 9).chunks(1000) for r in recs]
    assert [bytes(r) for r in chunked] == [bytes(r) for r in whole]
    # Another field in the schema leaves every other field's values as they were.
    extra = dict(SCHEMA, features=SCHEMA["features"] + [
        {"name": "pin_extra", "dtype": "float32", "shape": [4], "source": "candidate"}])
    wider_schema = FeatureSchema.from_dict(extra)
    wider = RecordLayout.from_schema(wider_schema, "candidate")
    a = layout.decode_many(whole)
    b = wider.decode_many(list(synth.Synthesizer(wider_schema, wider, 9).records(np.arange(1000))))
    for name in layout.fields:
        if layout.fields[name].ragged:
            np.testing.assert_array_equal(a[name].values, b[name].values, err_msg=name)
        else:
            np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def fraction(x, value=0) -> float:
    return float((np.asarray(x) == value).mean())


def test_values_look_like_production_features(demo):
    schema, layout, cols = demo
    by_op: dict[str, list[str]] = {}
    for f in schema.features.values():
        if f.source == "candidate" and not f.ragged and not f.shape:
            by_op.setdefault(f.transform.get("op", "identity"), []).append(f.name)
    cold = np.all([cols[n] == 0 for n in by_op["log1p"]], axis=0)
    assert 0.05 < cold.mean() < 0.12                      # new entities: every field default
    for name in by_op["log1p"]:                           # sparse whole-number counters
        v = cols[name]
        assert 0.45 < fraction(v) < 0.97 and np.array_equal(v, np.round(v)), name
    counters = np.concatenate([cols[n] for n in by_op["log1p"]])
    nonzero = counters[counters > 0]
    assert np.percentile(nonzero, 99.9) > 20 * np.median(nonzero)   # a heavy tail
    for name in by_op["clip"]:                            # in steps of 1/100 of the range
        t = schema[name].transform
        steps = (cols[name] - 0) / ((t["hi"] - t["lo"]) / 100)
        assert np.allclose(steps, np.round(steps), atol=1e-3), name
        assert (cols[name] > t["hi"]).mean() > 0.02, name  # some beyond the clip
    for name in by_op["standardize"]:
        t = schema[name].transform
        present = cols[name][~cold & (cols[name] != 0)]
        assert abs(np.median(present) - t["mean"]) < t["std"], name
    embeddings = [n for n in layout.fields if n.startswith("pin_emb")]
    for name in embeddings:                               # dense, a float16's 10-bit mantissa
        v = np.ascontiguousarray(cols[name][~cold])
        assert fraction(v) < 0.01 and not (v.view(np.uint32) & 0x1FFF).any(), name
        assert len(np.unique(v)) > 1000, name
    lists = [n for n in layout.fields if layout.fields[n].ragged]
    for name in lists:                                    # empty often, long sometimes
        lengths = np.diff(cols[name].offsets)
        assert 0.15 < fraction(lengths) < 0.6 and lengths.max() >= 60, name
        distinct = len(np.unique(cols[name].values))
        assert distinct <= 5000 and distinct < 0.5 * len(cols[name].values), name


def test_the_demo_batch_compresses_like_real_features(demo):
    """Not random floats: LZ4 finds something, but far from everything."""
    _, _, cols = demo
    raw = b"".join((c.values.tobytes() + c.offsets.tobytes()) if hasattr(c, "values")
                   else np.ascontiguousarray(c[:256]).tobytes() for c in cols.values())
    ratio = len(lz4.block.compress(raw, store_size=False)) / len(raw)
    assert 0.4 < ratio < 0.9, ratio
