"""``python -m leafproc`` / ``trimmer leaf``: run a leaf process.

Example::

    python -m leafproc --repo models/ --model ctr@3 --bind ipc:///run/trim/leaf-0.ipc \\
        --name leaf-0 --metrics-port 9101

Options may also come from ``--config leaf.json`` (keys are the long option
names with ``_`` for ``-``: ``{"repo": "...", "model": ["ctr@3"], "bind": [...]}``);
the command line overrides the file. Exit status: 0 after a clean SIGTERM
drain, 2 for a bad configuration.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import uuid

MIB = 1 << 20


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="trimmer leaf", description="Run a leaf: score trimmed batches.")
    p.add_argument("--config", help="JSON file with any of these options (command line wins)")
    p.add_argument("--repo", help="model repository: <repo>/<model>/<version>/{model.pt,module_info.json}")
    p.add_argument("--model", action="append", default=None, metavar="NAME[@VERSION]",
                   help="model version to serve (repeatable); NAME alone serves all its versions; "
                        "default: every version in the repository")
    p.add_argument("--bind", action="append", default=None, metavar="ENDPOINT",
                   help="ZeroMQ endpoint to bind, ipc:// or tcp:// (repeatable)")
    p.add_argument("--name", default=None, help="leaf name reported in pongs and logs")
    p.add_argument("--metrics-port", type=int, default=0, help="Prometheus port (0: off)")
    p.add_argument("--metrics-addr", default="0.0.0.0", help="address for the metrics server")
    p.add_argument("--max-batch-rows", type=int, default=4096,
                   help="rows above which dynamic batching stops merging requests")
    p.add_argument("--max-wait-ms", type=float, default=1.0,
                   help="longest a request waits for others to merge with (0: no dynamic batching)")
    p.add_argument("--max-message-bytes", type=int, default=256 * MIB,
                   help="largest batch frame (and decompressed batch) accepted; larger frames "
                        "are refused by the socket")
    p.add_argument("--max-queue", type=int, default=1024,
                   help="requests waiting per model version; past it new ones are answered "
                        "'overloaded' at once")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--threads", type=int, default=0,
                   help="torch intra-op threads (0: half the cores, at least 1)")
    p.add_argument("--drain-timeout-s", type=float, default=30.0,
                   help="on SIGTERM, longest wait for in-flight requests")
    p.add_argument("--config-store", default=None, metavar="DIR",
                   help="follow a stage of this staged config store: serve the stage's model "
                        "versions placed on this leaf, loading and unloading them as it changes "
                        "(instead of --model)")
    p.add_argument("--stage", default="production", choices=("canary", "production"),
                   help="stage to follow with --config-store")
    p.add_argument("--retire-grace-s", type=float, default=2.0,
                   help="with --config-store, how long a removed version keeps answering after "
                        "pongs stop offering it (covers the roots' ping interval)")
    p.add_argument("--curve-secret-key", default=None, metavar="FILE",
                   help="this leaf's CURVE key pair (NAME.key_secret, from `trimmer keys generate`): "
                        "tcp endpoints then require CURVE; ipc ones stay plain")
    p.add_argument("--curve-authorized", default=None, metavar="DIR",
                   help="with --curve-secret-key: directory of the public keys (NAME.key) of the "
                        "roots allowed to connect over tcp, re-read when it changes; '*': any key")
    p.add_argument("--log-level", default="INFO")
    return p


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.config:
        try:
            with open(args.config, "rb") as f:
                conf = json.load(f)
        except (OSError, ValueError) as exc:
            parser.error(f"--config {args.config}: {exc}")
        if not isinstance(conf, dict):
            parser.error(f"--config {args.config}: expected a JSON object")
        known = {a.dest for a in parser._actions} - {"help", "config"}
        unknown = sorted(set(conf) - known)
        if unknown:
            parser.error(f"--config {args.config}: unknown options {', '.join(unknown)}")
        for key in ("model", "bind"):
            if isinstance(conf.get(key), str):
                conf[key] = [conf[key]]
        parser.set_defaults(**conf)
        args = parser.parse_args(argv)
    if not args.repo:
        parser.error("--repo is required")
    if not args.bind:
        parser.error("--bind is required")
    if args.config_store and args.model:
        parser.error("--model and --config-store exclude each other: a following leaf serves "
                     "what the store's stage says")
    if (args.curve_secret_key is None) != (args.curve_authorized is None):
        parser.error("--curve-secret-key and --curve-authorized go together (--curve-authorized "
                     "'*' accepts any client key)")
    if args.retire_grace_s < 0:
        parser.error("--retire-grace-s must be >= 0")
    if args.max_batch_rows < 1 or args.max_wait_ms < 0 or args.max_message_bytes < 1024:
        parser.error("--max-batch-rows must be >= 1, --max-wait-ms >= 0, --max-message-bytes >= 1024")
    if not isinstance(args.max_queue, int) or isinstance(args.max_queue, bool) or args.max_queue < 1:
        parser.error(f"--max-queue must be an integer >= 1, got {args.max_queue!r}")
    return args


def select_models(repo, wanted: list[str] | None) -> list[tuple[str, str]]:
    """(model, version) pairs to serve; ValueError naming every one not found."""
    if not wanted:
        found = list(repo.iter_versions())
        if not found:
            raise ValueError(f"model repository {repo.root} holds no model versions")
        return found
    out, missing = [], []
    for item in wanted:
        name, sep, version = item.rpartition("@")
        if not sep:
            versions = repo.versions(item)
            out += [(item, v) for v in versions]
            if not versions:
                missing.append(item)
        elif repo.has(name, version):
            out.append((name, version))
        else:
            missing.append(item)
    if missing:
        raise ValueError(f"not in model repository {repo.root}: {', '.join(missing)}")
    return list(dict.fromkeys(out))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s leaf %(process)d %(levelname)s %(message)s")
    log = logging.getLogger("leafproc")

    import torch
    import zmq

    from signatures.module_info import ModelRepository

    from .metrics import LeafMetrics
    from .server import LeafServer
    from .worker import ModelWorker

    from _trim.curve import ServerKeys, secured

    curve_keys = None
    if args.curve_secret_key:
        try:
            curve_keys = ServerKeys.load(args.curve_secret_key, args.curve_authorized, "leaf curve")
        except ValueError as exc:
            log.error("%s", exc)
            return 2
        if not any(secured(ep) for ep in args.bind):
            log.warning("--curve-secret-key: no tcp:// endpoint to secure (ipc stays plain)")
    repo = ModelRepository(args.repo)
    try:
        loaded = [] if args.config_store else \
            [repo.load(m, v) for m, v in select_models(repo, args.model)]
    except (ValueError, KeyError) as exc:
        log.error("%s", exc)
        return 2
    if args.device == "cuda" and not torch.cuda.is_available():
        log.error("--device cuda: no CUDA device available")
        return 2
    device = torch.device("cuda" if args.device == "cuda" or (
        args.device == "auto" and torch.cuda.is_available()) else "cpu")
    # Leave a core for the I/O thread and decoding; several leaves may share a node.
    torch.set_num_threads(args.threads or max(1, (os.cpu_count() or 2) // 2))

    name = args.name or f"leaf-{os.getpid()}"
    metrics = LeafMetrics()
    ctx = zmq.Context()
    reply_endpoint = f"inproc://leaf-replies-{uuid.uuid4().hex}"

    def make_worker(path, info):
        return ModelWorker(path, info, ctx=ctx, reply_endpoint=reply_endpoint, device=device,
                           metrics=metrics, max_batch_rows=args.max_batch_rows,
                           max_wait_s=args.max_wait_ms / 1000.0,
                           max_message_bytes=args.max_message_bytes)

    workers = [make_worker(path, info) for path, info in loaded]
    try:
        server = LeafServer(name=name, binds=args.bind, workers=workers, ctx=ctx,
                            reply_endpoint=reply_endpoint, metrics=metrics,
                            max_message_bytes=args.max_message_bytes,
                            drain_timeout_s=args.drain_timeout_s, device=str(device),
                            curve_keys=curve_keys, max_queue=args.max_queue)
    except zmq.ZMQError as exc:
        log.error("cannot bind %s: %s", ", ".join(args.bind), exc)
        ctx.destroy(linger=0)
        return 2
    server.install_signal_handlers()
    metrics.serve(args.metrics_port, args.metrics_addr)
    for w in workers:
        w.start()  # after the PULL socket is bound, so their PUSH connects cleanly
    if args.config_store:
        from .follow import ModelFollower
        follower = ModelFollower(store_path=args.config_store, stage=args.stage, name=name,
                                 repo=repo, make_worker=make_worker, metrics=metrics,
                                 endpoints=server.bound, retire_grace_s=args.retire_grace_s)
        try:
            server.follower = follower.start(server)
        except Exception as exc:
            log.error("config store %s, stage %s: %s", args.config_store, args.stage, exc)
            server._shutdown()
            if server.security is not None:
                server.security.close()
            metrics.close()
            ctx.term()
            return 2
    log.info("leaf %s on %s serving %s (device %s%s)", name, ", ".join(server.bound),
             ", ".join(w.key for w in workers), device,
             ", CURVE on tcp" if curve_keys is not None else "")
    try:
        return server.run()
    finally:
        if server.security is not None:  # after the router: it stops the ZAP handler
            server.security.close()
        metrics.close()
        threads = list(workers) + list(server.workers.values())
        if server.follower is not None:
            threads += server.follower.workers()
        if all(not w.is_alive() for w in threads):
            ctx.term()
        log.info("leaf %s stopped", name)


if __name__ == "__main__":
    sys.exit(main())
