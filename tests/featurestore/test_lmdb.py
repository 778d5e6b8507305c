"""The LMDB feature store, its record format, loading, and the cache in front of a store."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from _trim.records.layout import RawField, RecordLayout
from rootproc.featurestore import cli as store_cli
from rootproc.featurestore import create_feature_store, open_feature_store
from rootproc.featurestore.cache import ABSENT, CachedStore, LRUCache
from rootproc.featurestore.lmdb_store import decode_key, encode_keys
from signatures.schema import FeatureSchema
from tests.root.world import SCHEMA, raw_data


@pytest.fixture(scope="module")
def schema():
    return FeatureSchema.from_dict(SCHEMA)


def test_keys_sort_like_ids():
    ids = np.array([-(1 << 63), -5, -1, 0, 1, 7, (1 << 63) - 1], dtype=np.int64)
    keys = encode_keys(ids)
    assert keys == sorted(keys)
    assert [decode_key(k) for k in keys] == ids.tolist()


def test_record_roundtrip_with_several_ragged_fields():
    layout = RecordLayout("candidate", [
        RawField("a", "float32"), RawField("v", "float64", 3, vector=True),
        RawField("r1", "int64", ragged=True), RawField("b", "int8", default=-3),
        RawField("r2", "int32", ragged=True, default=[9, 9])])
    assert layout.fixed_nbytes % 8 == 0
    for name, (_, offset) in layout.dtype.fields.items():
        assert offset % layout.dtype.fields[name][0].base.itemsize == 0, name
    recs = layout.encode_many(3, {"a": [1, 2, 3], "v": np.arange(9).reshape(3, 3),
                                  "r1": [[1, 2], [], [3]], "r2": [[4], [5, 6, 7], []]})
    recs.append(layout.encode({}))
    out = layout.decode_many(recs)
    assert out["a"].tolist() == [1, 2, 3, 0]
    assert out["v"].tolist()[:3] == np.arange(9).reshape(3, 3).tolist()
    assert out["b"].tolist() == [-3, -3, -3, -3]
    assert out["r1"].values.tolist() == [1, 2, 3] and out["r1"].offsets.tolist() == [0, 2, 2, 3, 3]
    assert out["r2"].values.tolist() == [4, 5, 6, 7, 9, 9]
    assert out["r2"].offsets.tolist() == [0, 1, 4, 4, 6]
    only = layout.decode_many(recs, ["r2"])
    assert set(only) == {"r2"}
    with pytest.raises(ValueError, match="no candidate raw field named zz"):
        layout.encode({"zz": 1})
    with pytest.raises(ValueError, match="corrupt"):
        layout.decode_many([recs[0][:-1]])


def test_bulk_packing_is_the_record_format_one_record_at_a_time():
    layout = RecordLayout("candidate", [
        RawField("a", "float32"), RawField("r1", "int64", ragged=True), RawField("b", "int8"),
        RawField("r2", "int16", ragged=True, default=[5]), RawField("r3", "bool", ragged=True)])
    rng = np.random.default_rng(0)
    n = 40
    rows = [{"a": float(i), "b": i % 7, "r1": rng.integers(0, 99, rng.integers(0, 5)).tolist(),
             "r3": [bool(x) for x in rng.integers(0, 2, rng.integers(0, 11))]} for i in range(n)]
    one_by_one = [layout.encode(r) for r in rows]
    columns = {k: [r[k] for r in rows] for k in ("a", "b", "r1", "r3")}
    packed = layout.pack_many(n, columns)
    assert [bytes(r) for r in packed] == one_by_one
    assert packed.nbytes == sum(map(len, one_by_one)) and all(len(r) % 8 == 0 for r in one_by_one)
    out = layout.decode_many(list(packed))
    assert out["r2"].values.tolist() == [5] * n             # the ragged default, every record
    assert out["r1"].values.tolist() == [x for r in rows for x in r["r1"]]
    with pytest.raises(ValueError, match="offsets do not fit"):
        layout.pack_many(2, {"r1": (np.arange(3), np.array([0, 2, 9]))})


def test_a_half_loaded_store_is_never_served(tmp_path, schema):
    store = create_feature_store(tmp_path / "s", schema)
    store.put_many("user", [1, 2], store.layout("user").encode_many(2, {}))
    store.close()                       # the loader died before commit
    with pytest.raises(ValueError, match="first load has not finished .* by pid"):
        open_feature_store(tmp_path / "s")
    with create_feature_store(tmp_path / "s", schema) as store:   # the load run again
        store.put_many("user", [3], store.layout("user").encode_many(1, {}))
    with open_feature_store(tmp_path / "s") as store:
        assert store.count("user") == 3 and "loading" not in store.info()
    # A reload into a loaded store that dies midway leaves it servable (same layouts).
    create_feature_store(tmp_path / "s", schema).close()
    with open_feature_store(tmp_path / "s") as store:
        assert store.count("user") == 3 and store.info()["loading"]["pid"] == os.getpid()


def test_unsorted_and_repeated_ids_after_an_append(tmp_path, schema):
    with create_feature_store(tmp_path / "s", schema) as store:
        layout = store.layout("candidate")
        enc = lambda vals: layout.encode_many(len(vals), {"ctr_7d": np.asarray(vals, np.float32)})  # noqa: E731
        store.put_many("candidate", [10, 11, 12], enc([1, 2, 3]))     # appended
        store.put_many("candidate", [5, 12, 30], enc([4, 5, 6]))      # not in order: a plain put
        store.put_many("candidate", [40, 41], enc([7, 8]))             # appended again
    with open_feature_store(tmp_path / "s") as store:
        got = store.get("candidate", [5, 10, 11, 12, 30, 40, 41, 99])
        assert got[-1] is None and store.count("candidate") == 7
        vals = store.layout("candidate").decode_many(got[:-1])["ctr_7d"].tolist()
        assert vals == [4, 1, 2, 5, 6, 7, 8]
        assert store.id_range("candidate") == (5, 41)


def test_load_npz_and_jsonl_read_back(tmp_path, schema):
    users, cands = raw_data()
    schema_path = tmp_path / "schema.json"
    schema_path.write_text(json.dumps(SCHEMA))
    np.savez(tmp_path / "c.npz", **cands)
    with open(tmp_path / "u.jsonl", "w") as f:
        for i, uid in enumerate(users["id"]):
            lo, hi = users["user_recent_pins.offsets"][i:i + 2]
            f.write(json.dumps({"id": int(uid), "user_emb": users["user_emb"][i].tolist(),
                                "user_age": float(users["user_age"][i]),
                                "user_recent_pins": users["user_recent_pins.values"][lo:hi].tolist()})
                    + "\n")
    store_dir = tmp_path / "store"
    assert store_cli.main(["load", "--feature-store", str(store_dir), "--schema", str(schema_path),
                           "--users", str(tmp_path / "u.jsonl"),
                           "--candidates", str(tmp_path / "c.npz")]) == 0
    with open_feature_store(store_dir) as store:
        assert store.count("user") == len(users["id"]) and store.count("candidate") == len(cands["id"])
        assert store.id_range("candidate") == (int(cands["id"][0]), int(cands["id"][-1]))
        pick = [int(cands["id"][5]), 77, int(cands["id"][0])]
        recs = store.get("candidate", pick)
        assert recs[1] is None
        out = store.layout("candidate").decode_many([recs[0], recs[2]])
        np.testing.assert_array_equal(out["pin_emb"], cands["pin_emb"][[5, 0]])
        np.testing.assert_array_equal(out["ctr_7d"], cands["ctr_7d"][[5, 0]])
        offs = cands["pin_topics.offsets"]
        want = np.concatenate([cands["pin_topics.values"][offs[5]:offs[6]],
                               cands["pin_topics.values"][offs[0]:offs[1]]])
        np.testing.assert_array_equal(out["pin_topics"].values, want)
        u = store.layout("user").decode_many(store.get("user", [int(users["id"][3])]))
        np.testing.assert_allclose(u["user_emb"][0], users["user_emb"][3])
        lo, hi = users["user_recent_pins.offsets"][3:5]
        assert u["user_recent_pins"].values.tolist() == users["user_recent_pins.values"][lo:hi].tolist()
    with pytest.raises(ValueError, match="no LMDB database"):
        open_feature_store(tmp_path / "nowhere")


def test_store_refuses_a_different_schema(tmp_path, schema):
    with create_feature_store(tmp_path / "s", schema) as store:
        layout = store.layout("user")
        store.put_many("user", [1], [layout.encode({})])
    other = dict(SCHEMA, features=[f for f in SCHEMA["features"] if f["name"] != "user_age"])
    with pytest.raises(ValueError, match="different schema; load into a new directory"):
        create_feature_store(tmp_path / "s", FeatureSchema.from_dict(other))


def test_two_processes_read_concurrently(tmp_path, schema):
    with create_feature_store(tmp_path / "s", schema) as store:
        layout = store.layout("candidate")
        store.put_many("candidate", range(2000), layout.encode_many(
            2000, {"ctr_7d": np.arange(2000, dtype=np.float32)}))
    reader = f"""
import sys, time
sys.path.insert(0, {os.getcwd()!r})
from rootproc.featurestore import open_feature_store
store = open_feature_store({str(tmp_path / 's')!r})
layout = store.layout("candidate")
total = 0.0
for _ in range(20):
    recs = store.get("candidate", list(range(2000)))
    total += float(layout.decode_many(recs)["ctr_7d"].sum())
print(total)
"""
    procs = [subprocess.Popen([sys.executable, "-c", reader], stdout=subprocess.PIPE, text=True)
             for _ in range(2)]
    # This process writes more records while they read: readers see committed data only.
    with create_feature_store(tmp_path / "s", schema) as store:
        store.put_many("candidate", range(2000, 4000), layout.encode_many(2000, {}))
    outs = [p.communicate(timeout=60)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert [float(o) for o in outs] == [20 * float(np.arange(2000).sum())] * 2


def test_lru_cache_hits_eviction_and_ttl():
    now = [0.0]
    cache = LRUCache(2, ttl_s=10, clock=lambda: now[0])
    cache.put(1, b"a")
    cache.put(2, b"b")
    assert cache.get(1) == b"a"          # 1 is now most recent
    cache.put(3, b"c")                   # evicts 2
    assert cache.get(2) is ABSENT and cache.get(3) == b"c"
    assert (cache.hits, cache.misses) == (2, 1)
    now[0] = 10.5
    assert cache.get(1) is ABSENT       # expired
    assert cache.expired == 1 and cache.hit_ratio == pytest.approx(2 / 4)


@pytest.mark.parametrize("backend", ["lmdb", "redis"])
def test_cached_store_counts_hits_and_remembers_misses(tmp_path, schema, backend, request):
    address = (request.getfixturevalue("module_redis_server").url(f"c{os.getpid()}")
               if backend == "redis" else tmp_path / "s")
    with create_feature_store(address, schema) as w:
        w.put_many("candidate", [1, 2], w.layout("candidate").encode_many(2, {}))
    with open_feature_store(address) as store:
        cached = CachedStore(store, size=10, ttl_s=None)
        first = cached.get("candidate", [1, 2, 3])
        assert first[2] is None and cached.store_reads["candidate"] == 3
        assert cached.get("candidate", [1, 2, 3]) == first
        c = cached.caches["candidate"]
        if backend == "lmdb":
            # Read in place from its memory map: the cache would only add a copy.
            assert cached.store_reads["candidate"] == 6 and c.size == 0
            with cached.reading({"candidate": [2, 9]}) as got:
                assert isinstance(got["candidate"][0], memoryview) and got["candidate"][1] is None
                assert bytes(got["candidate"][0]) == first[1]
            assert cached.store_reads["candidate"] == 8
            return
        assert cached.store_reads["candidate"] == 3
        assert (c.hits, c.misses) == (3, 3)
        with cached.reading({"candidate": [2, 9]}) as got:
            assert got["candidate"] == [first[1], None] and cached.store_reads["candidate"] == 4
        off = CachedStore(store, size=0, ttl_s=None)
        off.get("candidate", [1, 1])
        assert off.store_reads["candidate"] == 2


def test_load_names_the_file_line_and_field_of_a_bad_value(tmp_path, capsys):
    schema_path = tmp_path / "schema.json"
    schema_path.write_text(json.dumps(SCHEMA))
    users, _ = raw_data()
    with open(tmp_path / "u.jsonl", "w") as f:
        for i, uid in enumerate(users["id"][:3]):
            age = "old" if i == 2 else float(users["user_age"][i])
            f.write(json.dumps({"id": int(uid), "user_age": age}) + "\n")
    rc = store_cli.main(["load", "--feature-store", str(tmp_path / "store"), "--schema",
                         str(schema_path), "--users", str(tmp_path / "u.jsonl")])
    err = capsys.readouterr().err
    assert rc != 0
    assert f"{tmp_path / 'u.jsonl'}:3: field 'user_age'" in err and "'old'" in err, err
