"""Root → leaf (docs/protocol.md, sections 1-3): each case a message a root
sends to the real leaf-0, and the reply documented for it. The batches are
made here, byte by byte where a case breaks one, never by the root's code."""
from __future__ import annotations

import dataclasses
import os
import re

import numpy as np
import orjson
import pytest

from _trim import Batch, ColumnSpec, Layout, Ragged
from _trim.transport.protocol import compress
from _trim.transport.shm import SlotRing
from tests.root.world import direct
from tests.trim.conftest import header as batch_header
from tests.trim.conftest import table as batch_table

from .harness import ABSENT, Case, Pred, case_id, covers, error, fuzz_cases, run
from .messages import OMIT, hdr

pytestmark = pytest.mark.slow

ROWS = 4
KEY = "ctr@3"   # reads pin_ctr_7d, pin_quality, user_emb (8-vector, per request), user_recent_pins
MAX_MESSAGE_BYTES = 1 << 20


def columns(rows: int = ROWS) -> dict:
    rng = np.random.default_rng(rows)
    return {"pin_ctr_7d": rng.random(rows).astype("f4"),
            "pin_quality": rng.standard_normal(rows).astype("f4"),
            "user_emb": rng.standard_normal((1, 8)).astype("f4"),
            "user_recent_pins": Ragged(np.array([5, 7, 9], "i8"), np.array([0, 3], "i8"))}


def message(world, rows: int = ROWS, drop=(), extra=False, float64=()) -> bytearray:
    """A valid batch for ctr@3, as a mutable buffer: less the columns in
    ``drop``, those in ``float64`` as float64, and with a column it does not
    read when ``extra``."""
    specs = [s.column_spec() for s in world["inputs"][KEY] if s.name not in drop]
    specs = [dataclasses.replace(s, dtype="float64") if s.name in float64 else s for s in specs]
    arrays = {k: v.astype("f8") if k in float64 else v for k, v in columns(rows).items()
              if k not in drop}
    if extra:
        specs.append(ColumnSpec("pin_unused", "float32", (16,)))
        arrays["pin_unused"] = np.ones((rows, 16), "f4")
    return bytearray(Batch.from_arrays(Layout(specs), arrays, rows).buffer)


def expected(world, rows: int = ROWS) -> np.ndarray:
    cols = columns(rows)
    feats = {k: (tuple(v) if isinstance(v, Ragged) else v) for k, v in cols.items()}
    return direct(world, KEY, feats, rows)


def score(rid="s1", rows=ROWS, **fields) -> bytes:
    return hdr(**{"type": "score", "id": rid, "model": KEY, "rows": rows,
                  "compression": "none", **fields})


def scored(rid, rows=ROWS):
    """The documented scores reply, and a check that its frame is ctr@3's scores."""
    reply = {"v": 1, "type": "scores", "id": rid, "ok": True, "model": KEY, "rows": rows,
             "timing_us": {k: Pred(lambda t: type(t) is int and t >= 0, "us")
                           for k in ("queue", "decode", "infer")},
             "batch_rows": Pred(lambda b: type(b) is int and b >= rows, f">= {rows}")}

    def frames(ctx, header, got):
        assert len(got) == 1 and len(got[0]) == 4 * rows
        np.testing.assert_allclose(np.frombuffer(got[0], "<f4"), expected(ctx.world, rows),
                                   rtol=1e-5, atol=1e-5)
    return reply, frames


def with_batch(mutate=None, rid="b1", **fields):
    """send(ctx): [score header, ctr@3's batch changed by ``mutate(buf)``]."""
    def send(ctx):
        buf = message(ctx.world)
        if mutate is not None:
            mutate(buf)
        return [score(rid, **fields), bytes(buf)]
    return send


def col(buf, name: str):
    names = {"pin_ctr_7d": 0, "pin_quality": 1, "user_emb": 2, "user_recent_pins": 3}
    return batch_table(buf)[names[name]:names[name] + 1]


def setf(view, field: str, value):
    return lambda buf: view(buf).__setitem__(field, value)


def head(field: str, value):
    return setf(batch_header, field, value)


def column(name: str, field: str, value):
    return setf(lambda buf: col(buf, name), field, value)


def at(name: str, field: str):
    return lambda buf: int(col(buf, name)[field][0])


def offsets(name: str, index: int, value: int):
    def mutate(buf):
        start = at(name, "data_offset")(buf)
        np.frombuffer(buf, np.uint8)[start:start + 16].view("<i8")[index] = value
    return mutate


def name_byte(value: int):
    def mutate(buf):
        names_at = 32 + 40 * 4
        buf[names_at + at("pin_quality", "name_offset")(buf)] = value
    return mutate


def sliced_user_emb(world, pair=(2, 5), width=3, dtype=None) -> bytes:
    """ctr@3's batch with user_emb sent sliced, made by hand: a per-request
    5-wide float32 column (20 bytes) rewritten as positions ``pair`` of 8:
    its ranges (8 bytes), then 3 values (12 bytes); with ``dtype`` 9, its
    values as bfloat16 (2 bytes each, 6 zero bytes unused at the end are
    then cut from data_nbytes)."""
    specs = [s.column_spec() for s in world["inputs"][KEY]]
    specs = [dataclasses.replace(s, shape=(5,)) if s.name == "user_emb" else s for s in specs]
    arrays = columns()
    arrays["user_emb"] = np.zeros((1, 5), "f4")
    buf = bytearray(Batch.from_arrays(Layout(specs), arrays, ROWS).buffer)
    entry = col(buf, "user_emb")
    start = int(entry["data_offset"][0])
    region = np.frombuffer(buf, np.uint8)[start:start + 20]
    region[:8] = np.array(pair, "<u4").view(np.uint8)
    entry["flags"], entry["reserved"], entry["width"], entry["n_values"] = 2 | 4 | 8, 8, width, width
    if dtype is None:
        region[8:] = np.array([0.5, 1.5, 2.5], "<f4").view(np.uint8)
    else:
        region[8:14] = np.array([0x3F00, 0x3FC0, 0x4020], "<u2").view(np.uint8)
        entry["dtype"], entry["data_nbytes"] = dtype, 8 + 2 * width
    return bytes(buf)


def decode_error(message):
    return error("decode_error", message, rid="b1")


# -- section 1: what a receiver must check ----------------------------------------------

BATCH = [
    Case("batch.valid", "a valid batch is scored", with_batch(), *scored("b1")),
    Case("batch.per-request", "a per-request column is stored once and applies to every row",
         with_batch(rid="b2"), *scored("b2")),
    Case("batch.trailing", "bytes past total_nbytes are not part of the message",
         lambda ctx: [score("b3"), bytes(message(ctx.world)) + b"\xff" * 100], *scored("b3")),
    Case("batch.length", "shorter than 32 bytes", lambda ctx: [score("b1"), b"TRMB" + b"\0" * 20],
         decode_error("truncated message: 24 bytes")),
    Case("batch.length", "shorter than total_nbytes", with_batch(lambda b: b.__delitem__(
        slice(len(b) - 8, None))), decode_error("truncated message: header says")),
    Case("batch.magic", "bad magic", with_batch(lambda b: b.__setitem__(slice(0, 4), b"JUNK")),
         decode_error("not a trimmer message")),
    Case("batch.version", "version 2", with_batch(head("version", 2)),
         decode_error("unsupported message version 2")),
    Case("batch.header-size", "header_nbytes 40", with_batch(head("header_nbytes", 40)),
         decode_error("bad header size 40")),
    Case("batch.reserved", "header flags not 0", with_batch(head("flags", 4)),
         decode_error("header flags 0x4 are reserved")),
    Case("batch.reserved", "a column's reserved field not 0",
         with_batch(column("pin_quality", "reserved", 1)),
         decode_error("'pin_quality': reserved field is 1")),
    Case("batch.table", "a column table past total_nbytes", with_batch(head("n_columns", 2**20)),
         decode_error("column count 1048576 does not fit")),
    Case("batch.table", "a names region past total_nbytes", with_batch(head("names_nbytes", 2**31)),
         decode_error("names .* run past")),
    Case("batch.names", "a name outside the names region",
         with_batch(column("pin_quality", "name_offset", 2**31)),
         decode_error("column 1: name runs past")),
    Case("batch.names", "a name that is not UTF-8", with_batch(name_byte(0xFF)),
         decode_error("column 1: name is not valid UTF-8")),
    Case("batch.names", "an empty name", with_batch(column("pin_quality", "name_nbytes", 0)),
         decode_error("column 1: empty name")),
    Case("batch.names", "a duplicated name", with_batch(lambda b: (
        column("pin_quality", "name_offset", 0)(b), column("pin_quality", "name_nbytes",
                                                            len("pin_ctr_7d"))(b))),
         decode_error("duplicate column 'pin_ctr_7d'")),
    Case("batch.dtype", "an unknown dtype code", with_batch(column("pin_quality", "dtype", 10)),
         decode_error("'pin_quality': unknown dtype code 10")),
    Case("batch.flags", "an unknown flag bit", with_batch(column("pin_quality", "flags", 32)),
         decode_error("'pin_quality': unknown flags 0x20")),
    Case("batch.grouped-valid", "GROUPED on a column whose name lists no members",
         with_batch(column("user_emb", "flags", 4 | 16)),
         decode_error("'user_emb': its name must be a JSON array")),
    Case("batch.grouped-valid", "GROUPED with PER_REQUEST",
         with_batch(column("user_recent_pins", "flags", 1 | 2 | 16)),
         decode_error("'user_recent_pins': a grouped column is neither per-request nor sliced")),
    Case("batch.sliced-valid", "SLICED without VECTOR", with_batch(column("pin_quality", "flags", 8)),
         decode_error("'pin_quality': only a vector column can be sliced")),
    Case("batch.sliced-valid", "SLICED with a full width not above its width",
         with_batch(column("user_emb", "flags", 2 | 4 | 8)),
         decode_error("'user_emb': sliced from 0 positions but carries 8")),
    Case("batch.sliced-valid", "SLICED ranges that do not hold width positions",
         lambda ctx: [score("b1"), sliced_user_emb(ctx.world, (0, 2), width=3)],
         decode_error(r"'user_emb': ranges \[\[0, 2\]\] hold 2 positions, width says 3")),
    Case("batch.flags", "RAGGED with VECTOR", with_batch(column("user_recent_pins", "flags", 7)),
         decode_error("'user_recent_pins': a ragged column cannot be a vector")),
    Case("batch.width", "width 0", with_batch(column("user_emb", "width", 0)),
         decode_error("'user_emb': bad width 0")),
    Case("batch.width", "width 2 without VECTOR", with_batch(column("pin_quality", "width", 2)),
         decode_error("'pin_quality': bad width 2")),
    Case("batch.regions", "a region inside the names region",
         with_batch(column("pin_ctr_7d", "data_offset", 32)),
         decode_error("'pin_ctr_7d': data offset 32 is misplaced")),
    Case("batch.regions", "a region not 8-aligned", with_batch(lambda b: column(
        "pin_ctr_7d", "data_offset", at("pin_ctr_7d", "data_offset")(b) + 4)(b)),
         decode_error("'pin_ctr_7d': data offset .* is misplaced")),
    Case("batch.regions", "a region ending past total_nbytes",
         with_batch(column("pin_quality", "data_nbytes", 2**64 - 8)),
         decode_error("'pin_quality': data .* runs past")),
    Case("batch.dense", "n_values not rows x width", with_batch(column("pin_quality", "n_values", 5)),
         decode_error("'pin_quality': 5 values, expected 4 rows x 1")),
    Case("batch.data-nbytes", "data_nbytes larger than the formula",
         with_batch(column("user_emb", "data_nbytes", 40)),
         decode_error("'user_emb': data is 40 bytes, expected 32")),
    Case("batch.data-nbytes", "data_nbytes smaller than its values",
         with_batch(column("pin_quality", "data_nbytes", 8)),
         decode_error("'pin_quality': 8 bytes cannot hold 4 values")),
    Case("batch.ragged", "offsets not starting at 0", with_batch(offsets("user_recent_pins", 0, 1)),
         decode_error("'user_recent_pins': ragged offsets must start at 0")),
    Case("batch.ragged", "offsets decreasing", with_batch(offsets("user_recent_pins", 1, -1)),
         decode_error("'user_recent_pins': ragged offsets .* never decrease")),
    Case("batch.ragged", "last offset not n_values", with_batch(offsets("user_recent_pins", 1, 2)),
         decode_error("'user_recent_pins': last offset 2 != value count 3")),
    Case("batch.overlap", "two regions overlapping", with_batch(lambda b: column(
        "pin_quality", "data_offset", at("pin_ctr_7d", "data_offset")(b))(b)),
         decode_error("columns '(pin_ctr_7d|pin_quality)' and '(pin_ctr_7d|pin_quality)' overlap")),
]

# -- section 2: the leaf's score and ping ------------------------------------------------

LEAF = [
    Case("leaf.score-fields", "no model", with_batch(rid="f1", model=OMIT),
         error("bad_request", "'model' is missing", rid="f1")),
    Case("leaf.score-fields", "rows missing", with_batch(rid="f2", rows=OMIT),
         error("bad_request", "'rows' is missing", rid="f2")),
    Case("leaf.score-fields", "rows a string", with_batch(rid="f3", rows="4"),
         error("bad_request", "'rows' has the wrong type", rid="f3")),
    Case("leaf.score-fields", "rows negative", with_batch(rid="f4", rows=-1),
         error("bad_request", "'rows' has an invalid value -1", rid="f4")),
    Case("leaf.score-fields", "an unknown compression", with_batch(rid="f5", compression="zstd"),
         error("bad_request", "'compression' has an invalid value 'zstd'", rid="f5")),
    Case("leaf.unknown-model", "a version it does not serve", with_batch(rid="f6", model="nope@1"),
         error("unknown_model", "does not serve 'nope@1'", rid="f6",
               models=["ctr@3", "ctr@4", "eng@1"])),
    Case("leaf.rows", "rows other than the batch's n_rows", with_batch(rid="f7", rows=5),
         error("bad_request", "rows=5 but the batch has 4 rows", rid="f7")),
    Case("leaf.frames", "no batch frame", [score("f8")],
         error("bad_request", "2 frames .*got 1", rid="f8")),
    Case("leaf.frames", "an extra frame", lambda ctx: [score("f9"), bytes(message(ctx.world)), b"x"],
         error("bad_request", "2 frames .*got 3", rid="f9")),
    Case("envelope.frames-limit", "100,000 extra frames: the rest read and dropped, answered",
         lambda ctx: [score("f10"), bytes(message(ctx.world))] + [b""] * 100_000,
         error("bad_request", "100002 frames.*past the 15th", rid="f10")),
    Case("leaf.signature", "a batch without a feature the model reads",
         lambda ctx: [score("g1"), bytes(message(ctx.world, drop=("pin_quality",)))],
         error("signature_mismatch", "missing pin_quality", rid="g1", missing=["pin_quality"],
               mismatched=[])),
    Case("leaf.signature", "a feature of another type",
         lambda ctx: [score("g2"), bytes(message(ctx.world, float64=("pin_quality",)))],
         error("signature_mismatch", "pin_quality: expected float32 dense, got float64 dense",
               rid="g2", missing=[], mismatched=["pin_quality"])),
    Case("leaf.sub-feature-read", "a sliced column for a feature read whole",
         lambda ctx: [score("g4"), sliced_user_emb(ctx.world)],
         error("signature_mismatch", "user_emb: expected float32\\[8\\] dense per-request, got "
               "float32\\[3\\] dense per-request sliced .*sub-feature read mismatch",
               rid="g4", missing=[], mismatched=["user_emb"])),
    Case("leaf.sub-feature-read", "a narrowed column for a feature read whole",
         lambda ctx: [score("g5"), sliced_user_emb(ctx.world, dtype=9)],
         error("signature_mismatch", "user_emb: .* got bfloat16\\[3\\] .*sub-feature read "
               "mismatch", rid="g5", missing=[], mismatched=["user_emb"])),
    Case("leaf.extra-columns", "columns the model does not read are ignored",
         lambda ctx: [score("g3"), bytes(message(ctx.world, extra=True))], *scored("g3")),
    Case("leaf.lz4", "an LZ4 block with raw_nbytes",
         lambda ctx: [score("z1", compression="lz4", raw_nbytes=len(message(ctx.world))),
                      compress(bytes(message(ctx.world)))], *scored("z1")),
    Case("leaf.lz4", "lz4 without raw_nbytes",
         lambda ctx: [score("z2", compression="lz4"), compress(bytes(message(ctx.world)))],
         error("bad_request", "'raw_nbytes' is missing", rid="z2")),
    Case("leaf.lz4", "raw_nbytes over the leaf's maximum message size",
         lambda ctx: [score("z3", compression="lz4", raw_nbytes=MAX_MESSAGE_BYTES + 1),
                      compress(bytes(message(ctx.world)))],
         error("too_large", "raw_nbytes 1048577 is above", rid="z3")),
    Case("leaf.lz4", "a block that does not decompress",
         lambda ctx: [score("z4", compression="lz4", raw_nbytes=200), b"\x00not lz4\xff" * 5],
         error("decode_error", "LZ4", rid="z4")),
    Case("leaf.lz4", "raw_nbytes other than what it decompresses to",
         lambda ctx: [score("z5", compression="lz4", raw_nbytes=len(message(ctx.world)) + 8),
                      compress(bytes(message(ctx.world)))],
         error("decode_error", "LZ4", rid="z5")),
    Case("leaf.deadline", "deadline_ms 0: already passed, answered and not run",
         with_batch(rid="d1", deadline_ms=0), error("deadline", "deadline passed", rid="d1")),
    Case("leaf.deadline", "deadline_ms negative", with_batch(rid="d2", deadline_ms=-1),
         error("bad_request", "'deadline_ms'", rid="d2")),
    Case("leaf.deadline", "time left: run", with_batch(rid="d3", deadline_ms=5000), *scored("d3")),
    Case("leaf.deadline", "no deadline_ms: no deadline at the leaf", with_batch(rid="d4"),
         *scored("d4")),
    Case("leaf.frame-cap", "a frame over max_message_bytes: no reply, dropped",
         [score("c1"), b"\0" * (MAX_MESSAGE_BYTES + 4096)], None, timeout=1.5),
    Case("leaf.id", "a score without an id", with_batch(rid=OMIT),
         error("bad_request", "'id' is missing")),
    Case("leaf.id", "an unusable id", with_batch(rid=["x"]), error("bad_request", "1 to 128")),
    Case("leaf.id", "echoed whatever else is wrong", [hdr(type="score", id="i3", v=2)],
         error("bad_request", "version 2", rid="i3")),
    Case("leaf.types", "describe is no request type", [hdr(type="describe", id="t1")],
         error("bad_request", "unknown request type 'describe'", rid="t1")),
    Case("leaf.types", "nor anything but score and ping", [hdr(type="explode", id="t2")],
         error("bad_request", "unknown request type 'explode'", rid="t2")),
    Case("leaf.scores", "the scores reply: model, rows, timing, batch_rows, one frame",
         with_batch(rid="r1"), *scored("r1")),
    Case("leaf.ping", "the pong", [hdr(type="ping", id="p1")],
         {"v": 1, "type": "pong", "id": "p1", "ok": True, "role": "leaf", "name": "leaf-0",
          "pid": Pred(lambda p: type(p) is int and p > 0, "a pid"), "draining": False,
          "max_message_bytes": MAX_MESSAGE_BYTES, "sub_feature_columns": True,
          "models": [{"model": k, "signature_hash": Pred(lambda h: isinstance(h, str) and len(h) == 64,
                                                          "a sha256"), "ready": True,
                      "error": ABSENT} for k in ("ctr@3", "eng@1", "ctr@4")]}),
]


@pytest.mark.parametrize("case", BATCH + LEAF, ids=case_id)
def test_root_to_leaf(node, case):
    run(case, node.leaf0.endpoint, node)


# -- section 3: shared memory -----------------------------------------------------------


@pytest.fixture(scope="module")
def ring():
    with SlotRing("conformance", 1 << 16, 2) as r:
        yield r


def in_slot(ring, buf, slot=0) -> dict:
    ring.slot(slot)[:len(buf)] = buf
    return ring.descriptor(slot, len(buf))


def shm(rid, change=None, frames=(), **fields):
    """send(ctx): a score request whose batch lies in the test's ring."""
    def send(ctx):
        desc = in_slot(ctx.ring, message(ctx.world))
        if change is not None:
            desc = change(desc)
        return [score(rid, shm=desc, **fields), *frames]
    return send


def desc(**fields):
    return lambda d: {**d, **fields}


SHM = [
    Case("shm.descriptor", "a batch in a slot is scored like a frame", shm("m1"), *scored("m1")),
    Case("shm.descriptor", "not a trimmer segment name",
         shm("m2", desc(segment="../../etc/passwd")), error("bad_request", "bad shm descriptor", rid="m2")),
    Case("shm.descriptor", "no such segment", shm("m3", desc(segment="trimmer-1-none-00000000")),
         error("bad_request", "bad shm descriptor", rid="m3")),
    Case("shm.descriptor", "a size other than the segment's",
         shm("m4", lambda d: {**d, "size": d["size"] + 64}),
         error("bad_request", "bad shm descriptor", rid="m4")),
    Case("shm.descriptor", "a range outside the segment",
         shm("m5", lambda d: {**d, "offset": d["size"] - 8}),
         error("bad_request", "bad shm descriptor", rid="m5")),
    Case("shm.descriptor", "not an object", lambda ctx: [score("m6", shm="trimmer-1-x-00000000")],
         error("bad_request", "'shm' must be an object", rid="m6")),
    Case("shm.descriptor", "with a frame after the header", shm("m7", frames=[b"extra"]),
         error("bad_request", "1 frame .*got 2", rid="m7")),
    Case("shm.descriptor", "with compression lz4", shm("m8", compression="lz4", raw_nbytes=100),
         error("bad_request", "never compressed", rid="m8")),
    Case("shm.descriptor", "nbytes over the leaf's maximum message size",
         shm("m9", desc(nbytes=MAX_MESSAGE_BYTES + 1)), error("too_large", rid="m9")),
    Case("shm.quiet-decode", "a slot that does not decode: no byte of it quoted",
         lambda ctx: [score("q1", shm=in_slot(ctx.ring, b"TRMB" + b"\x07" * 60))],
         error("decode_error", "^shared-memory batch does not decode \\(the leaf's log says why\\)$",
               rid="q1")),
]


@pytest.mark.parametrize("case", SHM, ids=case_id)
def test_shm_descriptors(node, ring, case):
    node.ring = ring
    run(case, node.leaf0.endpoint, node)


SHM_TCP = [Case("shm.ipc-only", "a descriptor over tcp is refused", shm("t1"),
                error("bad_request", "ipc:// links only", rid="t1"))]


@pytest.mark.parametrize("case", SHM_TCP, ids=case_id)
def test_shm_descriptors_over_tcp(node, ring, case):
    node.ring = ring
    run(case, node.leaf0_tcp, node)


@covers("shm.slot-run")
def test_a_batch_in_a_run_of_consecutive_slots_is_scored_like_a_frame(node):
    """A message larger than a slot starts at its run's first slot and goes
    on across the slot boundaries: the leaf reads ``nbytes`` from ``offset``."""
    buf = message(node.world)
    with SlotRing("conformance_run", 64, 2 * (len(buf) // 64 + 2)) as ring:
        ring.acquire()   # slot 0 held: the run starts further on
        start = ring.acquire(count=ring.slots_for(len(buf)))
        assert start and ring.run_length(start) > 1
        case = Case("shm.slot-run", "a batch spanning slots",
                    lambda ctx: [score("r1", shm=in_slot(ring, buf, start))], *scored("r1"))
        run(case, node.leaf0.endpoint, node)


@covers("shm.segment-name")
def test_ring_segments_are_named_by_pid_and_sanitised_label(node):
    """The root's ring for leaf-0 is /dev/shm/trimmer-<root pid>-leaf_0-<8 hex>."""
    names = [n for n in os.listdir("/dev/shm") if n.startswith(f"trimmer-{node.root.pid}-")]
    assert len(names) == 1 and re.fullmatch(rf"trimmer-{node.root.pid}-leaf_0-[0-9a-f]{{8}}",
                                            names[0]), names


@covers("shm.peer-user")
def test_a_peer_running_as_another_user_is_refused():
    """The uid check itself (the kernel's SO_PEERCRED word, as the leaf's I/O
    loop passes it in): this machine's tests cannot connect as another user
    to a socket file only its owner may open."""
    from _trim.transport.protocol import ProtocolError
    from leafproc.inbox import ShmInbox
    inbox = ShmInbox(MAX_MESSAGE_BYTES, reap=False)
    try:
        desc = {"segment": "trimmer-1-x-00000000", "size": 64, "offset": 0, "nbytes": 8}
        with pytest.raises(ProtocolError, match="not uid 4242") as refused:
            inbox.resolve({"shm": desc}, [b"header"], "none", 4242)
        assert refused.value.kind == "bad_request"
    finally:
        inbox.close()


def fuzzed(seed: int):
    """send(ctx): a score request to the leaf with a header field or some batch
    bytes changed at random."""
    def send(ctx):
        rng = np.random.default_rng(seed)
        head = {"v": 1, "type": "score", "id": f"z{seed}", "model": KEY, "rows": ROWS,
                "compression": "none", "deadline_ms": 5000}
        values = [None, True, -1, 0, 2**32, 1.5, "", "lz4", [], {}, "x" * 300, 2**64 - 1]
        if rng.random() < 0.4:
            head[str(rng.choice(list(head) + ["raw_nbytes", "shm"]))] = values[
                rng.integers(len(values))]
        buf = message(ctx.world)
        for pos in rng.integers(0, len(buf), size=rng.integers(1, 8)):
            buf[pos] = rng.integers(0, 256)
        if rng.random() < 0.2:
            del buf[rng.integers(0, len(buf)):]
        return [orjson.dumps(head), bytes(buf)]
    return send


FUZZ = fuzz_cases("fuzzed batch", fuzzed)


@pytest.mark.parametrize("case", FUZZ, ids=case_id)
def test_no_root_input_yields_internal(node, case):
    run(case, node.leaf0.endpoint, node)   # `run` refuses `internal` in any reply
