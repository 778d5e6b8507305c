"""A realistic feature schema, generated deterministically from a seed."""
from __future__ import annotations

import numpy as np


def demo_schema(seed: int = 0, scale: float = 1.0) -> dict:
    """About 1,500 features at scale 1: user-side per-request features, and
    candidate-side scalar counters, small vectors, embeddings and id lists,
    plus cross features (user embedding · candidate embedding)."""
    rng = np.random.default_rng(seed)
    n = lambda count: max(1, int(round(count * scale)))  # noqa: E731
    feats = [{"name": "user_emb", "dtype": "float32", "shape": [128], "source": "user"},
             {"name": "user_recent_pins", "dtype": "int64", "kind": "ragged", "source": "user",
              "transform": {"op": "hash", "buckets": 1_000_000}},
             {"name": "user_topics", "dtype": "int64", "kind": "ragged", "source": "user",
              "transform": {"op": "hash", "buckets": 10_000}}]
    for i in range(n(30)):
        feats.append({"name": f"user_cnt_{i:02d}", "dtype": "float32", "source": "user",
                      "transform": {"op": "log1p"}})
    transforms = [{"op": "log1p"}, {"op": "clip", "lo": 0.0, "hi": 100.0},
                  {"op": "standardize", "mean": 1.0, "std": 3.0}, {"op": "identity"}]
    for i in range(n(1000)):
        feats.append({"name": f"pin_cnt_{i:04d}", "dtype": "float32", "source": "candidate",
                      "transform": transforms[int(rng.integers(len(transforms)))]})
    for i in range(n(400)):
        feats.append({"name": f"pin_vec_{i:03d}", "dtype": "float32",
                      "shape": [int(rng.integers(4, 17))], "source": "candidate"})
    embedding_widths = [32, 64, 128, 256]
    for i in range(n(30)):
        width = 128 if i < 5 else embedding_widths[int(rng.integers(len(embedding_widths)))]
        feats.append({"name": f"pin_emb_{i:02d}", "dtype": "float32", "shape": [width],
                      "source": "candidate"})
    for i in range(n(50)):
        feats.append({"name": f"pin_ids_{i:02d}", "dtype": "int64", "kind": "ragged",
                      "source": "candidate", "transform": {"op": "hash", "buckets": 100_000}})
    for i in range(min(5, n(30))):
        feats.append({"name": f"affinity_{i}", "dtype": "float32", "source": "cross",
                      "transform": {"op": "dot", "inputs": ["user_emb", f"pin_emb_{i:02d}"]}})
    return {"format": 1, "features": feats}


# Fraction of the schema each demo model reads: the seed's models differ widely.
# Bytes a candidate's row of every feature takes in a batch at schema scale 1
# (9.4 MB for 256 candidates); larger scales add features in proportion.
ROW_NBYTES_AT_SCALE_1 = 37_000
MODEL_FRACTIONS = {"ctr": 0.15, "engage": 0.30, "save": 0.45, "hide": 0.60}


def model_fractions(count: int = len(MODEL_FRACTIONS)) -> dict[str, float]:
    """``count`` models: the four above, then ``m04``, ``m05``, ... reading
    the same spread of the schema (15 % to 60 %) in turn."""
    if count < 1:
        raise ValueError(f"a scenario needs at least one model, got {count}")
    spread = list(MODEL_FRACTIONS.values())
    named = list(MODEL_FRACTIONS.items())[:count]
    return dict(named + [(f"m{i:02d}", spread[i % len(spread)]) for i in range(len(named), count)])


def model_feature_sets(schema, seed: int = 0,
                       models: int = len(MODEL_FRACTIONS)) -> dict[str, tuple[list[str], list[str]]]:
    """For each of ``models`` demo models, the (dense, ragged) features it reads."""
    rng = np.random.default_rng(seed + 1)
    names = schema.names
    out = {}
    for model, fraction in model_fractions(models).items():
        chosen = sorted(rng.choice(len(names), size=max(2, int(len(names) * fraction)), replace=False))
        picked = [names[i] for i in chosen]
        dense = [n for n in picked if not schema[n].ragged]
        ragged = [n for n in picked if schema[n].ragged]
        if not dense:
            dense = [next(n for n in names if not schema[n].ragged)]
        out[model] = (dense, ragged)
    return out
