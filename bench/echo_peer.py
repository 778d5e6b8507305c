"""A stand-in leaf that does nothing but the transport's share of a request.

It speaks the leaf protocol (ping, score with a payload frame or an shm
descriptor), decodes each batch in place as a leaf does, and answers zero
scores: no model thread, no forward pass. Against it, the transport
benchmark measures what each transport costs without the leaf's Python
request handling on top.

Its pongs report each model version as a real leaf does (docs/protocol.md,
"Pongs, health and rotation"): ``{"model", "ready": true, "signature_hash"}``,
the hash given after ``=`` (what the leaf would read from that version's
module_info.json). A root trims a version only when every replica reports
the hash its config has for it: a model given without a hash is sent every
feature (a trim gap), as from a leaf that reports none.

    python bench/echo_peer.py ENDPOINT MODEL[=SIGNATURE_HASH][,MODEL[=SIGNATURE_HASH]...]
"""
from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import numpy as np
import zmq

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import _trim  # noqa: E402
from _trim.transport import protocol as P  # noqa: E402
from _trim.transport.shm import SegmentReader  # noqa: E402
from _trim.transport.sockets import remove_ipc_files  # noqa: E402


def parse_models(spec: str) -> dict[str, str | None]:
    """``"a@1=HASH,b@1"`` -> {"a@1": "HASH", "b@1": None}."""
    out: dict[str, str | None] = {}
    for item in spec.split(","):
        key, _, digest = item.partition("=")
        out[key] = digest or None
    return out


def pong_models(models: dict[str, str | None]) -> list[dict]:
    return [{"model": m, "ready": True, **({"signature_hash": h} if h else {})}
            for m, h in models.items()]


def answer(header: dict, payload: list, reader: SegmentReader, models: dict) -> list:
    if header["type"] == "ping":
        return [P.pack_header({"type": "pong", "id": header.get("id"), "ok": True, "pid": os.getpid(),
                               "models": pong_models(models)})]
    buf = reader.view(header["shm"]) if "shm" in header else payload[0].buffer
    rows = _trim.decode(buf).n_rows  # the views die here: the slot is not read after the reply
    return [P.pack_header({"type": "scores", "id": header["id"], "ok": True,
                           "model": header.get("model", next(iter(models))), "rows": rows}),
            np.zeros(rows, P.SCORES_DTYPE).tobytes()]


def serve(endpoint: str, spec: str) -> None:
    models = parse_models(spec)
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    router.bind(endpoint)
    reader = SegmentReader()
    poller = zmq.Poller()
    poller.register(router, zmq.POLLIN)
    try:
        while not stop:
            if not poller.poll(100):
                continue
            peer, head, *payload = router.recv_multipart(copy=False)
            router.send_multipart([peer] + answer(P.unpack_header(head.buffer), payload,
                                                  reader, models))
    finally:
        router.close()
        reader.close()
        ctx.term()
        remove_ipc_files([endpoint])


if __name__ == "__main__":
    serve(*sys.argv[1:3])
    os._exit(0)
