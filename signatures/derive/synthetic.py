"""Synthetic features for a model, built as the leaf builds them
(docs/signatures.md, model convention): the dry run's inputs, and the
example inputs `torch.export` traces a model with."""
from __future__ import annotations

import numpy as np
import torch

from signatures.schema import FeatureSchema


def input_keys(schema: FeatureSchema, names) -> list[str]:
    """The features dict's keys for ``names``, in the order the leaf builds them:
    by feature name, a ragged feature as ``.values`` then ``.offsets``."""
    keys = []
    for name in sorted(names):
        keys += [f"{name}.values", f"{name}.offsets"] if schema[name].ragged else [name]
    return keys


def synthetic_inputs(schema: FeatureSchema, names, rows: int, seed: int = 0, *,
                     min_list_len: int = 0, contiguous: bool = False) -> dict:
    """Inputs for ``names``, in the order given; values drawn from each feature's
    domain (hash features within their buckets). A per-request dense feature is
    a stride-0 view unless ``contiguous``; lists hold ``min_list_len`` to 3 values."""
    rng = np.random.default_rng(seed)
    out: dict[str, torch.Tensor] = {}
    for name in names:
        f = schema[name]
        n_rows = 1 if f.per_request else rows
        if f.ragged:
            lengths = rng.integers(min_list_len, 4, size=n_rows)
            offsets = np.concatenate(([0], np.cumsum(lengths))).astype(np.int64)
            out[f"{name}.values"] = torch.from_numpy(_values(f, (int(offsets[-1]),), rng))
            out[f"{name}.offsets"] = torch.from_numpy(offsets)
        else:
            t = torch.from_numpy(_values(f, (n_rows,) + f.shape, rng))
            if f.per_request:
                t = t.expand((rows,) + f.shape)
                t = t.contiguous() if contiguous else t
            out[name] = t
    return out


def _values(feature, shape, rng) -> np.ndarray:
    dtype = np.dtype(feature.dtype)
    op = feature.transform.get("op")
    if op == "hash":
        return rng.integers(0, feature.transform["buckets"], size=shape).astype(dtype)
    if dtype.kind == "f":
        return rng.standard_normal(shape).astype(dtype)
    if dtype.kind == "b":
        return rng.integers(0, 2, size=shape).astype(bool)
    return rng.integers(0, 10, size=shape).astype(dtype)


__all__ = ["input_keys", "synthetic_inputs"]
