"""A small serving world for root tests: schema, raw data, store, models, bundle.

The raw data is generated here with numpy and loaded through `trimmer store
load`, and `expected_features` recomputes every feature from it with
independent arithmetic (the hash with Python ints), so end-to-end scores are
checked against the models run directly, not against the root's own code.
"""
from __future__ import annotations

import json
import os

import numpy as np

SCHEMA = {"format": 1, "features": [
    {"name": "user_emb", "dtype": "float32", "shape": [8], "source": "user"},
    {"name": "user_age", "dtype": "float32", "source": "user",
     "transform": {"op": "clip", "lo": 13, "hi": 90}, "default": 30},
    {"name": "user_recent_pins", "dtype": "int64", "kind": "ragged", "source": "user",
     "transform": {"op": "hash", "buckets": 1000}},
    {"name": "pin_ctr_7d", "dtype": "float32", "source": "candidate", "raw": "ctr_7d",
     "transform": {"op": "log1p"}},
    {"name": "pin_ctr_raw", "dtype": "float32", "source": "candidate", "raw": "ctr_7d",
     "transform": {"op": "clip", "lo": 0, "hi": 5}},
    {"name": "pin_age_days", "dtype": "float32", "source": "candidate",
     "transform": {"op": "clip", "lo": 0, "hi": 365}, "default": 7},
    {"name": "pin_quality", "dtype": "float32", "source": "candidate",
     "transform": {"op": "standardize", "mean": 0.5, "std": 0.2}},
    {"name": "pin_topics", "dtype": "int64", "kind": "ragged", "source": "candidate",
     "transform": {"op": "hash", "buckets": 512}},
    {"name": "pin_words", "dtype": "int32", "kind": "ragged", "source": "candidate"},
    {"name": "pin_emb", "dtype": "float32", "shape": [8], "source": "candidate"},
    {"name": "pin_cat", "dtype": "int64", "source": "candidate",
     "transform": {"op": "hash", "buckets": 64}},
    {"name": "pin_unused", "dtype": "float32", "shape": [16], "source": "candidate"},
    {"name": "user_pin_affinity", "dtype": "float32", "source": "cross",
     "transform": {"op": "dot", "inputs": ["user_emb", "pin_emb"]}},
]}

# Three models reading different subsets (the first input is a per-row dense one,
# as GenericScorer needs). pin_unused is read by none: trimming never sends it.
MODELS = {
    "ctr@3": ["pin_ctr_7d", "pin_quality", "user_emb", "user_recent_pins"],
    "eng@1": ["pin_age_days", "pin_emb", "user_pin_affinity", "pin_topics"],
    "div@2": ["pin_ctr_raw", "pin_cat", "user_age", "pin_words"],
}
# Hosted by leaf-0 but absent from the bundle: the root must fail open.
GAP_MODEL = ("ctr@4", MODELS["ctr@3"])
PLACEMENT = {"leaves": {"leaf-0": {"current": ["ctr@3", "eng@1"]},
                        "leaf-1": {"current": ["div@2"]}}}
USER_IDS = np.arange(100, 110, dtype=np.int64)
CANDIDATE_IDS = np.arange(1000, 1300, dtype=np.int64)


def ragged(rng, n, dtype, hi, max_len=6):
    lengths = rng.integers(0, max_len, size=n)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    return rng.integers(0, hi, size=int(offsets[-1])).astype(dtype), offsets


def raw_data(seed: int = 7) -> tuple[dict, dict]:
    rng = np.random.default_rng(seed)
    nu, nc = len(USER_IDS), len(CANDIDATE_IDS)
    pins = ragged(rng, nu, np.int64, 1 << 40)
    users = {"id": USER_IDS, "user_emb": rng.standard_normal((nu, 8)).astype(np.float32),
             "user_age": rng.uniform(5, 100, nu).astype(np.float32),
             "user_recent_pins.values": pins[0], "user_recent_pins.offsets": pins[1]}
    topics = ragged(rng, nc, np.int64, 1 << 50)
    words = ragged(rng, nc, np.int32, 5000)
    ctr = np.where(rng.random(nc) < 0.5, 0, rng.uniform(0, 9, nc)).astype(np.float32)
    cands = {"id": CANDIDATE_IDS, "ctr_7d": ctr,
             "pin_age_days": rng.uniform(-10, 400, nc).astype(np.float32),
             "pin_quality": rng.random(nc).astype(np.float32),
             "pin_topics.values": topics[0], "pin_topics.offsets": topics[1],
             "pin_words.values": words[0], "pin_words.offsets": words[1],
             "pin_emb": rng.standard_normal((nc, 8)).astype(np.float32),
             "pin_cat": rng.integers(-(1 << 62), 1 << 62, nc).astype(np.int64),
             "pin_unused": rng.random((nc, 16)).astype(np.float32)}
    return users, cands


M64 = (1 << 64) - 1


def bucket(x: int, buckets: int) -> int:
    h = int(x) & M64
    h ^= h >> 33
    h = (h * 0xFF51AFD7ED558CCD) & M64
    h ^= h >> 33
    h = (h * 0xC4CEB9FE1A85EC53) & M64
    h ^= h >> 33
    return h % buckets


def _rows(values, offsets, idx):
    lists = [values[offsets[i]:offsets[i + 1]] for i in idx]
    offs = np.concatenate([[0], np.cumsum([len(x) for x in lists])]).astype(np.int64)
    return (np.concatenate(lists) if lists else values[:0]), offs


def expected_features(users: dict, cands: dict, user_id: int, candidate_ids) -> dict:
    """Every schema feature for one request, from raw data. Unknown ids take
    the schema defaults (0 / empty unless the schema says otherwise)."""
    upos = {int(u): i for i, u in enumerate(users["id"])}
    cpos = {int(c): i for i, c in enumerate(cands["id"])}
    u = upos.get(int(user_id))
    if u is None:
        emb, age, pins = np.zeros((1, 8), np.float32), np.float32(30), np.zeros(0, np.int64)
    else:
        emb = users["user_emb"][u:u + 1]
        age = users["user_age"][u]
        pins = users["user_recent_pins.values"][users["user_recent_pins.offsets"][u]:
                                                users["user_recent_pins.offsets"][u + 1]]
    known = [cpos.get(int(c)) for c in candidate_ids]
    n = len(known)

    def col(name, default=0.0, width=None):
        arr = cands[name]
        shape = (n,) + arr.shape[1:]
        out = np.full(shape, default, dtype=arr.dtype)
        for r, k in enumerate(known):
            if k is not None:
                out[r] = arr[k]
        return out

    def rag(name):
        values, offsets = cands[name + ".values"], cands[name + ".offsets"]
        lists = [values[offsets[k]:offsets[k + 1]] if k is not None else values[:0] for k in known]
        offs = np.concatenate([[0], np.cumsum([len(x) for x in lists])]).astype(np.int64)
        return np.concatenate(lists) if lists else values[:0], offs

    ctr = col("ctr_7d")
    pin_emb = col("pin_emb")
    topics = rag("pin_topics")
    f32 = np.float32
    return {
        "user_emb": emb.astype(f32),
        "user_age": np.array([min(max(age, 13), 90)], dtype=f32),
        "user_recent_pins": (np.array([bucket(x, 1000) for x in pins], dtype=np.int64),
                             np.array([0, len(pins)], dtype=np.int64)),
        "pin_ctr_7d": np.log1p(ctr).astype(f32),
        "pin_ctr_raw": np.clip(ctr, 0, 5).astype(f32),
        "pin_age_days": np.clip(col("pin_age_days", 7.0), 0, 365).astype(f32),
        "pin_quality": ((col("pin_quality") - f32(0.5)) / f32(0.2)).astype(f32),
        "pin_topics": (np.array([bucket(x, 512) for x in topics[0]], dtype=np.int64), topics[1]),
        "pin_words": rag("pin_words"),
        "pin_emb": pin_emb,
        "pin_cat": np.array([bucket(x, 64) for x in col("pin_cat")], dtype=np.int64),
        "pin_unused": col("pin_unused"),
        "user_pin_affinity": (pin_emb.astype(np.float64) @ emb[0].astype(np.float64)).astype(f32),
    }


def column_nbytes(feature: dict, rows: int, ragged_values: int = 0) -> int:
    """Unpadded bytes of a feature's column region (docs/protocol.md)."""
    itemsize = np.dtype(feature["dtype"]).itemsize
    r = 1 if feature["source"] == "user" else rows
    if feature.get("kind") == "ragged":
        return 8 * (r + 1) + ragged_values * itemsize
    width = feature.get("shape", [1])[0] if feature.get("shape") else 1
    return r * width * itemsize


def message_nbytes(names, rows: int, feats: dict) -> int:
    """The documented size of a message carrying ``names``:
    align8(32 + 40*C + sum(len(name))) + sum(align8(region))."""
    def align8(x):
        return (x + 7) // 8 * 8
    by_name = {f["name"]: f for f in SCHEMA["features"]}
    total = align8(32 + 40 * len(names) + sum(len(n.encode()) for n in names))
    for n in names:
        f = by_name[n]
        count = len(feats[n][0]) if f.get("kind") == "ragged" else 0
        total += align8(column_nbytes(f, rows, count))
    return total


def write_schema(base) -> tuple:
    """The world's schema written to ``base``/schema.json: (path, FeatureSchema)."""
    from signatures.schema import FeatureSchema
    schema_path = os.path.join(os.fspath(base), "schema.json")
    with open(schema_path, "w") as f:
        json.dump(SCHEMA, f)
    return schema_path, FeatureSchema.load(schema_path)


def build_world(base) -> dict:
    """Write schema, store, model repository and bundle under ``base``."""
    from rootproc.featurestore import cli as store_cli
    from signatures.bundle import build
    from signatures.repository.module_info import ModelRepository, TensorSpec
    from tests.support.models import write_model

    base = os.fspath(base)
    schema_path, schema = write_schema(base)
    users, cands = raw_data()
    np.savez(os.path.join(base, "users.npz"), **users)
    np.savez(os.path.join(base, "cands.npz"), **cands)
    store = os.path.join(base, "store")
    rc = store_cli.main(["load", "--feature-store", store, "--schema", schema_path,
                         "--users", os.path.join(base, "users.npz"),
                         "--candidates", os.path.join(base, "cands.npz")])
    assert rc == 0
    repo = os.path.join(base, "repo")
    paths, inputs = {}, {}
    for key, names in list(MODELS.items()) + [GAP_MODEL]:
        model, version = key.split("@")
        specs = [TensorSpec.from_feature(schema[n]) for n in names]
        paths[key], _ = write_model(repo, model, version, specs)
        inputs[key] = specs
    bundle = build(ModelRepository(repo), schema, PLACEMENT)
    bundle_path = os.path.join(base, "bundle.json")
    bundle.save(bundle_path)
    return {"base": base, "schema": schema_path, "store": store, "repo": repo,
            "bundle": bundle_path, "model_paths": paths, "inputs": inputs,
            "users": users, "cands": cands, "bundle_obj": bundle}


def root_config(world: dict, leaf_endpoints: dict, bind: str, **overrides) -> dict:
    cfg = {"name": "root-test", "bind": [bind], "schema": world["schema"],
           "bundle": world["bundle"], "feature_store": world["store"],
           "leaves": [{"name": name, "endpoints": [ep]} for name, ep in leaf_endpoints.items()],
           "deadline_ms": 5000, "metrics_port": None, "ping_interval_ms": 100,
           "health_timeout_ms": 1000}
    cfg.update(overrides)
    return cfg


def write_root_config(path, cfg: dict) -> str:
    with open(path, "w") as f:
        json.dump(cfg, f)
    return os.fspath(path)


def direct(world: dict, key: str, feats: dict, n: int) -> np.ndarray:
    """Scores of model version ``key`` run directly on ``feats`` (no root, no leaf)."""
    from tests.support.models import direct_scores
    inputs = world["inputs"][key]
    return direct_scores(world["model_paths"][key], inputs, {s.name: feats[s.name] for s in inputs}, n)


def assert_scores_match(world: dict, res, user: int, cands, models) -> dict:
    """``res`` holds, for each of ``models``, the scores the model computes on
    the features the root should have built; returns those features."""
    assert res.ok, res.error
    assert not set(models) & set(res.errors), res.errors
    feats = expected_features(world["users"], world["cands"], user, cands)
    for key in models:
        np.testing.assert_allclose(res.scores[key], direct(world, key, feats, len(cands)),
                                   rtol=1e-5, atol=1e-4, err_msg=key)
    return feats
