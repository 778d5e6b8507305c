"""``python -m leafproc`` / ``trimmer leaf``: run a leaf process.

Example::

    python -m leafproc --repo models/ --model ctr@3 --bind ipc:///run/trim/leaf-0.ipc \\
        --name leaf-0 --metrics-port 9101

Settings may also come from ``--config leaf.json`` (leafproc/config.py:
``{"repo": "...", "models": ["ctr@3"], "bind": [...]}``); the command line
overrides the file. Exit status: 0 after a clean SIGTERM drain, 2 when it
cannot start with the settings given (the message says why).
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import uuid

from _trim.errors import ConfigError
from _trim.transport.model_key import SEPARATOR, ModelKey
from signatures.settings import add_arguments, load

from .config import LeafSettings


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="trimmer leaf", description="Run a leaf: score trimmed batches.")
    add_arguments(p, LeafSettings)
    return p


def parse_args(argv: list[str]) -> LeafSettings:
    """The leaf's settings from ``argv`` (``--config`` then flags); ConfigError
    listing every problem."""
    return load(LeafSettings, build_parser().parse_args(argv))


def select_models(repo, wanted: list[str] | None) -> list[tuple[str, str]]:
    """(model, version) pairs to serve; ValueError naming every one not found."""
    if not wanted:
        found = list(repo.iter_versions())
        if not found:
            raise ValueError(f"model repository {repo.root} holds no model versions")
        return found
    out, missing = [], []
    for item in wanted:
        if SEPARATOR not in item:
            versions = repo.versions(item)
            out += [(item, v) for v in versions]
            if not versions:
                missing.append(item)
        elif repo.has((key := ModelKey(item)).name, key.version):
            out.append((key.name, key.version))
        else:
            missing.append(item)
    if missing:
        raise ValueError(f"not in model repository {repo.root}: {', '.join(missing)}")
    return list(dict.fromkeys(out))


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(sys.argv[1:] if argv is None else argv)
    except ConfigError as exc:
        print(f"trimmer leaf: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s leaf %(process)d %(levelname)s %(message)s")
    log = logging.getLogger("leafproc")

    import torch
    import zmq

    from signatures.module_info import ModelRepository

    from .metrics import LeafMetrics
    from .server import LeafServer
    from .worker import ModelWorker

    from _trim.transport.curve import ServerKeys
    from _trim.transport.sockets import secured

    curve_keys = None
    if args.curve is not None and args.curve.secret_key:
        try:
            curve_keys = ServerKeys.load(args.curve.secret_key, args.curve.authorized, "leaf curve")
        except ValueError as exc:
            log.error("%s", exc)
            return 2
        if not any(secured(ep) for ep in args.bind):
            log.warning("--curve-secret-key: no tcp:// endpoint to secure (ipc stays plain)")
    repo = ModelRepository(args.repo)
    try:
        loaded = [] if args.config_store else \
            [repo.load(m, v) for m, v in select_models(repo, list(args.models))]
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
        server = LeafServer(name=name, binds=list(args.bind), workers=workers, ctx=ctx,
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
