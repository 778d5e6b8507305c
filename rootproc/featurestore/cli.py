"""``trimmer store``: create, fill and inspect a feature store (LMDB or Redis).

    trimmer store synth --feature-store ADDRESS --schema S --users N --candidates M --seed K
    trimmer store load  --feature-store ADDRESS --schema S [--users FILE] [--candidates FILE]
    trimmer store info  --feature-store ADDRESS

ADDRESS is a directory (LMDB) or ``redis[s]://HOST:PORT/DB[?namespace=NAME]``
(rootproc/featurestore/__init__.py). Records are written in chunks (one LMDB transaction, or
a few pipelined Redis commands, each), packed in bulk, and the store's
metadata last: until a load finishes, a new store is never served.

``load`` reads numpy ``.npz`` (an ``id`` array, one array per raw field;
a ragged field as ``NAME.values`` + ``NAME.offsets``) or JSON lines
(``.jsonl``: one object per entity with ``id`` and its raw fields; lists for
ragged and vector fields). Raw fields a file lacks take their defaults.
"""
from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from collections.abc import Iterator
from queue import Queue
from typing import Any

import numpy as np
import orjson

from _trim import Ragged
from _trim.records.layout import SOURCES, RecordLayout
from rootproc.featurestore import FeatureStore, create_feature_store, open_feature_store
from rootproc.featurestore.synth import Synthesizer
from signatures.schema import FeatureSchema

LOAD_CHUNK = 4096


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
        try:
            packed = layout.pack_many(stop - start, chunk)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{path}: records {start}-{stop - 1} (arrays "
                             f"{', '.join(sorted(chunk))}): {exc}") from None
        yield ids[start:stop], packed


def bad_value(path: str, rows, linenos, layout: RecordLayout, exc: Exception) -> ValueError:
    """The error for a chunk that would not pack: the first line and field
    whose value is not of the field's type, else ``exc`` with the lines."""
    for row, lineno in zip(rows, linenos):
        for name, f in layout.fields.items():
            if name not in row:
                continue
            value = row[name]
            try:
                arr = np.asarray(value, dtype=np.dtype(f.dtype))
                ok = arr.ndim == 1 if f.ragged else \
                    (arr.shape == (f.width,) if f.vector else arr.ndim == 0)
            except (TypeError, ValueError) as why:
                return ValueError(f"{path}:{lineno}: field {name!r}: {value!r} is not "
                                  f"{f.dtype} ({why})")
            if not ok:
                shape = "a list" if f.ragged else \
                    (f"a list of {f.width}" if f.vector else "a single value")
                return ValueError(f"{path}:{lineno}: field {name!r}: {value!r} is not {shape} "
                                  f"of {f.dtype}")
    return ValueError(f"{path}:{linenos[0]}-{linenos[-1]}: {exc}")


def read_jsonl(path: str, layout: RecordLayout):
    def flush(rows, linenos):
        ids = np.array([r["id"] for r in rows], dtype=np.int64)
        unknown = sorted({k for r in rows for k in r} - set(layout.fields) - {"id"})
        if unknown:
            raise ValueError(f"{path}: {unknown} are not {layout.source} raw fields of the schema")
        columns = {}
        for name, f in layout.fields.items():
            if any(name in r for r in rows):
                default = f.default_value().tolist()
                columns[name] = [r.get(name, default) for r in rows]
        try:
            return ids, layout.pack_many(len(rows), columns)
        except (TypeError, ValueError) as exc:
            raise bad_value(path, rows, linenos, layout, exc) from None

    rows: list = []
    linenos: list[int] = []
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
            linenos.append(lineno)
            if len(rows) == LOAD_CHUNK:
                yield flush(rows, linenos)
                rows, linenos = [], []
    if rows:
        yield flush(rows, linenos)


def chunks_for(args, store: FeatureStore, schema, source: str) -> tuple[int | None, Iterator]:
    """(records expected or None, a lazy iterator of (ids, records)): nothing
    is made (a synthesizer set up, a file opened) before its first item."""
    if args.action == "synth":
        count = getattr(args, f"{source}s")

        def synth() -> Iterator:
            yield from Synthesizer(schema, store.layout(source), args.seed).chunks(count)
        return count, synth()
    path = getattr(args, f"{source}s")
    if not path:
        return 0, iter(())
    reader = read_npz if path.endswith(".npz") else read_jsonl
    return None, reader(path, store.layout(source))


def ahead(chunks: Iterator) -> Iterator:
    """``chunks``, each made in a thread while the one before it is written:
    making (compiled, numpy) and the store (writing) both run without the GIL."""
    done = object()
    queue: Queue = Queue(maxsize=1)

    def make() -> None:
        try:
            for chunk in chunks:
                queue.put(chunk)
            queue.put(done)
        except BaseException as exc:   # handed to the writer, which raises it
            queue.put(exc)

    thread = threading.Thread(target=make, name="store-chunks", daemon=True)
    thread.start()
    while (item := queue.get()) is not done:
        if isinstance(item, BaseException):
            raise item
        yield item
    thread.join()


def write(args, store: FeatureStore, schema) -> tuple[dict, int]:
    """Every chunk of ``args`` written, the sources one after the other from
    one thread making them (the next source's set-up overlaps the last
    writes of the one before); (records per source, bytes)."""
    from tqdm import tqdm
    counts, nbytes = {s: 0 for s in SOURCES}, 0
    plans = [(source, *chunks_for(args, store, schema, source)) for source in SOURCES]
    totals = {source: total for source, total, _ in plans}
    made = ((source, ids, records) for source, _, chunks in plans for ids, records in chunks)
    progress: Any = None
    shown = None
    try:
        for source, ids, records in ahead(made):
            if source != shown:
                if progress is not None:
                    progress.close()
                progress = tqdm(total=totals[source], unit="rec", desc=source, file=sys.stderr,
                                leave=False, disable=args.no_progress or None)
                shown = source
            store.put_many(source, ids, records)
            counts[source] += len(ids)
            nbytes += records.nbytes
            progress.update(len(ids))
    finally:
        if progress is not None:
            progress.close()
    return counts, nbytes


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="trimmer store", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="action", required=True)
    synth = sub.add_parser("synth", help="generate synthetic data for a schema")
    load = sub.add_parser("load", help="load .npz or .jsonl files")
    info = sub.add_parser("info", help="counts, id ranges and layouts")
    for p in (synth, load, info):
        p.add_argument("--feature-store", required=True, metavar="ADDRESS",
                       help="an LMDB directory (created if absent) or redis[s]://HOST:PORT/DB"
                            "[?namespace=NAME] (password: in the URL or $TRIMMER_REDIS_PASSWORD)")
    for p in (synth, load):
        p.add_argument("--schema", required=True)
        p.add_argument("--no-progress", action="store_true")
    synth.add_argument("--users", type=int, required=True)
    synth.add_argument("--candidates", type=int, required=True)
    synth.add_argument("--seed", type=int, default=0)
    load.add_argument("--users", help="file of user records")
    load.add_argument("--candidates", help="file of candidate records")
    args = parser.parse_args(argv)
    from _trim.memory import keep_large_buffers
    keep_large_buffers()   # a chunk's buffers reuse the last chunk's pages
    try:
        if args.action == "info":
            with open_feature_store(args.feature_store) as store:
                print(json.dumps(store.info(), indent=2))
            return 0
        if args.action == "synth" and min(args.users, args.candidates) < 0:
            raise ValueError("--users and --candidates must be >= 0")
        schema = FeatureSchema.load(args.schema)
        t0 = time.perf_counter()
        with create_feature_store(args.feature_store, schema) as store:
            counts, nbytes = write(args, store, schema)
            address = store.address
        elapsed = time.perf_counter() - t0
        total = sum(counts.values())
        print(f"{address}: wrote " + ", ".join(f"{n} {s} records" for s, n in counts.items())
              + f" in {elapsed:.1f} s ({total / elapsed:,.0f} records/s, "
                f"{nbytes / elapsed / 1e6:,.0f} MB/s)")
        return 0
    except (ValueError, OSError) as exc:
        print(f"trimmer store: {exc}", file=sys.stderr)
        return 2


__all__ = ["main"]
