"""Synthetic batches with the width mix of a real recommender."""
from __future__ import annotations

import numpy as np

from _trim import Batch, ColumnSpec, Layout, Ragged, compile_plan


def mixed_layout(n_features: int, rng: np.random.Generator) -> Layout:
    """60% scalar float32, 30% 16-d, 10% 64-d, then 5% more as ragged id lists."""
    kinds = rng.choice(3, size=n_features, p=[0.6, 0.3, 0.1])
    widths = {0: (), 1: (16,), 2: (64,)}
    specs = [ColumnSpec(f"f{i:05d}", "float32", widths[k]) for i, k in enumerate(kinds)]
    specs += [ColumnSpec(f"ids{i:04d}", "int64", ragged=True) for i in range(max(1, n_features // 20))]
    order = rng.permutation(len(specs))  # ragged columns interleaved, as in a real schema
    return Layout(specs[i] for i in order)


def filled_batch(layout: Layout, rows: int, rng: np.random.Generator) -> Batch:
    arrays = {}
    for col in layout:
        if col.ragged:
            lengths = rng.integers(0, 40, size=rows)
            offsets = np.concatenate(([0], np.cumsum(lengths)))
            arrays[col.name] = Ragged(rng.integers(0, 1 << 40, size=int(offsets[-1])), offsets)
        else:
            arrays[col.name] = rng.random((rows,) + col.shape, dtype=np.float32)
    return Batch.from_arrays(layout, arrays, rows)


def scenario(n_features: int, rows: int, fraction: float, seed: int = 0):
    rng = np.random.default_rng(seed)
    layout = mixed_layout(n_features, rng)
    batch = filled_batch(layout, rows, rng)
    chosen = rng.choice(len(layout), size=int(len(layout) * fraction), replace=False)
    plan = compile_plan(layout, [layout.columns[i].name for i in chosen])
    return layout, batch, plan


def copy_ranges(plan, batch):
    """(src_start, dst_start, nbytes) per copy: what a numpy implementation
    would precompute, handed to it for free so that the baseline is its best case."""
    table, pos, j, out = batch.table, plan.table_nbytes, 0, []
    for length in plan.run_lengths:
        first, last = plan.columns[j], plan.columns[j + length - 1]
        j += length
        start = int(table["data_offset"][first])
        nbytes = int(table["data_offset"][last] + table["data_nbytes"][last]) - start
        out.append((start, pos, nbytes))
        pos += (nbytes + 7) & ~7
    return out
