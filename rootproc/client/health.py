"""``trimmer health ENDPOINT``: ping a root or a leaf; exit 0 if it answers.

Prints the pong (JSON). For a root, also exit 1 when ``--require-leaves``
is given and one of its leaf replicas is unhealthy.
"""
from __future__ import annotations

import argparse
import sys

import orjson
import zmq

from _trim.transport.protocol import ProtocolError, pack_header, unpack_header
from rootproc.client.scoring_client import add_curve_arguments, connect_dealer, curve_keys


def ping(endpoint: str, timeout_ms: int = 1000, ctx: zmq.Context | None = None,
         curve_server_public_key=None, curve_client_secret_key=None) -> dict:
    """The pong of the process at ``endpoint``; TimeoutError if none in time.
    With a server key, a tcp endpoint is reached over CURVE (see client.py)."""
    ctx = ctx or zmq.Context.instance()
    keys = curve_keys(curve_server_public_key, curve_client_secret_key)
    _, sock, handshakes = connect_dealer(ctx, [endpoint], keys, watch=True)
    try:
        sock.send_multipart([pack_header({"type": "ping", "id": "health"})])
        if not sock.poll(timeout_ms):
            raise TimeoutError(f"{endpoint}: no answer within {timeout_ms} ms{handshakes.hint()}")
        header = unpack_header(sock.recv_multipart()[0])
        if header["type"] != "pong":
            raise ProtocolError(header.get("error", {}).get("kind", "bad_request"),
                                f"{endpoint}: answered {header['type']!r}, not a pong")
        return header
    finally:
        handshakes.close(sock)
        sock.close(linger=0)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="trimmer health", description=__doc__.splitlines()[0])
    parser.add_argument("endpoint")
    parser.add_argument("--timeout-ms", type=int, default=1000)
    parser.add_argument("--require-leaves", action="store_true",
                        help="(root) unhealthy unless every leaf replica answers its pings")
    add_curve_arguments(parser)
    args = parser.parse_args(argv)
    try:
        pong = ping(args.endpoint, args.timeout_ms, curve_server_public_key=args.curve_server_public_key,
                    curve_client_secret_key=args.curve_client_secret_key)
    except (TimeoutError, ProtocolError, zmq.ZMQError, ValueError) as exc:
        print(f"unhealthy: {exc}", file=sys.stderr)
        return 1
    print(orjson.dumps(pong, option=orjson.OPT_INDENT_2).decode())
    if args.require_leaves and not all(link.get("healthy") for link in pong.get("leaves", [])):
        print("unhealthy: some leaf replicas do not answer", file=sys.stderr)
        return 1
    return 0
