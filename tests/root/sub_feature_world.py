"""A serving world whose models read less than whole features (issue 29):
a schema of wide vectors, a store whose values hold every float edge case
(NaN with payloads, ±inf, subnormals, signed zeros, values at the
bfloat16/float16 rounding boundaries), and the `tests.support.sub_feature_models`
in TorchScript and torch.export, their reads written by hand."""
from __future__ import annotations

import dataclasses
import json
import os

import numpy as np

SCHEMA = {"format": 1, "features": [
    {"name": "u", "dtype": "float32", "shape": [6], "source": "user"},
    {"name": "ctr", "dtype": "float32", "source": "candidate"},
    {"name": "emb", "dtype": "float32", "shape": [256], "source": "candidate"},
    {"name": "dense", "dtype": "float32", "shape": [12], "source": "candidate"},
    {"name": "wide", "dtype": "float64", "shape": [10], "source": "candidate"},
]}
SOURCES = {"mat": "Matryoshka", "bf": "Bf16Ranker", "half": "HalfRanker"}
VERSIONS = {"torchscript": "1", "export": "2"}
USER_IDS = np.arange(1, 9, dtype=np.int64)
CANDIDATE_IDS = np.arange(100, 400, dtype=np.int64)


def edge_values(rng, shape, dtype) -> np.ndarray:
    """Random values, a third of them edge cases."""
    f32 = np.float32
    bits = np.array([0x7FC00000, 0xFFC00001, 0x7F800001, 0x7FBFFFFF, 0x7F800000, 0xFF800000,
                     0x00000001, 0x80000001, 0x007FFFFF, 0x00000000, 0x80000000, 0x3F808000,
                     0x3F818000, 0x3F807FFF, 0x3F808001, 0x477FF000, 0x477FEFFF, 0x33000000,
                     0x33000001, 0x38801000, 0x3F801000, 0x3F803000, 0x7F7FFFFF,
                     0x7F7F8000], dtype=np.uint32).view(f32)
    values = (rng.standard_normal(shape) * 10.0 ** rng.integers(-6, 6, shape)).astype(dtype)
    edge = rng.random(shape) < 0.33
    with np.errstate(invalid="ignore"):
        values[edge] = rng.choice(bits, int(edge.sum())).astype(dtype)
    if dtype == np.float64:
        # Off float32's ties by less than float32 can hold: torch's cast (through
        # float32) and a direct one differ here.
        ties = edge & (rng.random(shape) < 0.3)
        values[ties] = rng.choice([1 + 2.0 ** -11 + 2.0 ** -40, 1 + 2.0 ** -8 + 2.0 ** -40,
                                   -(1 + 2.0 ** -8 - 2.0 ** -41), 1e300], int(ties.sum()))
    return values


def raw_data(seed: int = 11) -> tuple[dict, dict]:
    rng = np.random.default_rng(seed)
    nu, nc = len(USER_IDS), len(CANDIDATE_IDS)
    users = {"id": USER_IDS, "u": edge_values(rng, (nu, 6), np.float32)}
    cands = {"id": CANDIDATE_IDS, "ctr": edge_values(rng, (nc,), np.float32),
             "emb": edge_values(rng, (nc, 256), np.float32),
             "dense": edge_values(rng, (nc, 12), np.float32),
             "wide": edge_values(rng, (nc, 10), np.float64)}
    return users, cands


def features(users: dict, cands: dict, user: int, candidates) -> dict:
    u = int(np.nonzero(users["id"] == user)[0][0])
    rows = [int(np.nonzero(cands["id"] == c)[0][0]) for c in candidates]
    out = {"u": users["u"][u:u + 1]}
    for name in ("ctr", "emb", "dense", "wide"):
        out[name] = cands[name][rows]
    return out


def build(base) -> dict:
    from _trim.reads import FeatureRead
    from rootproc.featurestore import cli as store_cli
    from signatures.bundle import build as build_bundle
    from signatures.derive.exporter import export
    from signatures.repository.module_info import ModelRepository
    from signatures.schema import FeatureSchema
    from tests.support.sub_feature_models import SUB_FEATURE_READS

    base = os.fspath(base)
    schema_path = os.path.join(base, "schema.json")
    with open(schema_path, "w") as f:
        json.dump(SCHEMA, f)
    schema = FeatureSchema.load(schema_path)
    users, cands = raw_data()
    np.savez(os.path.join(base, "users.npz"), **users)
    np.savez(os.path.join(base, "cands.npz"), **cands)
    store = os.path.join(base, "store")
    assert store_cli.main(["load", "--feature-store", store, "--schema", schema_path,
                           "--users", os.path.join(base, "users.npz"),
                           "--candidates", os.path.join(base, "cands.npz")]) == 0
    repo = os.path.join(base, "repo")
    keys, infos = [], []
    for model, cls in SOURCES.items():
        for fmt, version in VERSIONS.items():
            infos.append((cls, export(f"tests.support.sub_feature_models:{cls}", repo, model,
                                      schema, version=version, fmt=fmt)))
    for cls, info in infos:
        reads = SUB_FEATURE_READS[cls]
        inputs = [dataclasses.replace(s, read=FeatureRead.from_dict(reads[s.name], "test"))
                  if s.name in reads else s for s in info.inputs]
        info = dataclasses.replace(info, inputs=inputs, signature_hash="")
        info.write(os.path.join(repo, info.model, info.version))
        keys.append(info.key)
    placement = {"leaves": {"leaf-0": {"current": keys}}}
    bundle = build_bundle(ModelRepository(repo), schema, placement)
    bundle_path = os.path.join(base, "bundle.json")
    bundle.save(bundle_path)
    return {"base": base, "schema": schema_path, "store": store, "repo": repo,
            "bundle": bundle_path, "bundle_obj": bundle, "keys": keys, "users": users,
            "cands": cands}
