"""``trimmer store``: create, fill and inspect the LMDB feature store.

    trimmer store synth --feature-store DIR --schema S --users N --candidates M --seed K
    trimmer store load  --feature-store DIR --schema S [--users FILE] [--candidates FILE]
    trimmer store info  --feature-store DIR

``load`` reads numpy ``.npz`` (an ``id`` array, one array per raw field;
a ragged field as ``NAME.values`` + ``NAME.offsets``) or JSON lines
(``.jsonl``: one object per entity with ``id`` and its raw fields; lists for
ragged and vector fields). Raw fields a file lacks take their defaults.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
import orjson

from _trim import Ragged
from signatures.schema import FeatureSchema

from .records import RecordLayout
from .store import FeatureStore
from .synth import synth_chunks

LOAD_CHUNK = 8192


def read_npz(path: str, layout: RecordLayout):
    with np.load(path, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    if "id" not in arrays:
        raise ValueError(f"{path}: no 'id' array")
    ids = arrays.pop("id").astype(np.int64)
    columns = {}
    for name in list(arrays):
        if name.endswith(".values"):
            base = name[:-len(".values")]
            if base + ".offsets" not in arrays:
                raise ValueError(f"{path}: {name} without {base}.offsets")
            columns[base] = Ragged(arrays.pop(name), arrays.pop(base + ".offsets").astype(np.int64))
    columns.update(arrays)
    unknown = sorted(set(columns) - set(layout.fields))
    if unknown:
        raise ValueError(f"{path}: arrays {unknown} are not {layout.source} raw fields of the schema")
    for start in range(0, len(ids), LOAD_CHUNK):
        stop = min(start + LOAD_CHUNK, len(ids))
        chunk = {}
        for name, col in columns.items():
            if isinstance(col, Ragged):
                offs = col.offsets[start:stop + 1]
                chunk[name] = Ragged(col.values[offs[0]:offs[-1]], offs - offs[0])
            else:
                chunk[name] = col[start:stop]
        yield ids[start:stop], layout.encode_many(stop - start, chunk)


def read_jsonl(path: str, layout: RecordLayout):
    def flush(rows):
        ids = np.array([r["id"] for r in rows], dtype=np.int64)
        records = [layout.encode({k: v for k, v in r.items() if k != "id"}) for r in rows]
        return ids, records

    rows = []
    with open(path, "rb") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                raise ValueError(f"{path}:{lineno}: not JSON: {exc}") from None
            if not isinstance(row, dict) or not isinstance(row.get("id"), int):
                raise ValueError(f"{path}:{lineno}: expected an object with an integer 'id'")
            rows.append(row)
            if len(rows) == LOAD_CHUNK:
                yield flush(rows)
                rows = []
    if rows:
        yield flush(rows)


def load_file(store: FeatureStore, source: str, path: str) -> int:
    layout = store.layout(source)
    reader = read_npz if path.endswith(".npz") else read_jsonl
    total = 0
    for ids, records in reader(path, layout):
        store.put_many(source, ids, records)
        total += len(ids)
    return total


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="trimmer store", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="action", required=True)
    synth = sub.add_parser("synth", help="generate synthetic data for a schema")
    load = sub.add_parser("load", help="load .npz or .jsonl files")
    info = sub.add_parser("info", help="counts, id ranges and layouts")
    for p in (synth, load, info):
        p.add_argument("--feature-store", required=True, metavar="DIR",
                       help="feature store directory (created if absent)")
    for p in (synth, load):
        p.add_argument("--schema", required=True)
    synth.add_argument("--users", type=int, required=True)
    synth.add_argument("--candidates", type=int, required=True)
    synth.add_argument("--seed", type=int, default=0)
    load.add_argument("--users", help="file of user records")
    load.add_argument("--candidates", help="file of candidate records")
    args = parser.parse_args(argv)
    try:
        if args.action == "info":
            with FeatureStore(args.feature_store) as store:
                print(json.dumps(store.info(), indent=2))
            return 0
        schema = FeatureSchema.load(args.schema)
        t0 = time.perf_counter()
        with FeatureStore.create(args.feature_store, schema) as store:
            counts = {}
            if args.action == "synth":
                for source, count in (("user", args.users), ("candidate", args.candidates)):
                    if count < 0:
                        raise ValueError(f"--{source}s must be >= 0")
                    counts[source] = 0
                    for ids, records in synth_chunks(schema, store.layout(source), count, args.seed):
                        store.put_many(source, ids, records)
                        counts[source] += len(ids)
            else:
                for source, path in (("user", args.users), ("candidate", args.candidates)):
                    if path:
                        counts[source] = load_file(store, source, path)
        print(f"{args.feature_store}: wrote " + ", ".join(f"{n} {s} records" for s, n in counts.items())
              + f" in {time.perf_counter() - t0:.1f} s")
        return 0
    except (ValueError, OSError) as exc:
        print(f"trimmer store: {exc}", file=sys.stderr)
        return 2


__all__ = ["main", "load_file"]
