"""``python -m rootproc`` / ``trimmer root``: run a root process.

Exit status: 0 after a clean drain (SIGTERM / SIGINT), 2 for a bad config.
"""
from __future__ import annotations

import argparse
import logging
import sys

from .config import add_arguments, config_from_args

log = logging.getLogger("rootproc")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="trimmer root", description="Run a root process: "
                                     "fetch, preprocess, trim and fan scoring requests out to leaves.")
    add_arguments(parser)
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    from _trim.shm import ShmUnavailable

    from .server import RootServer
    try:
        cfg = config_from_args(args)
        server = RootServer(cfg)
    except (ValueError, ShmUnavailable) as exc:
        print(f"trimmer root: {exc}", file=sys.stderr)
        return 2
    if cfg.metrics_port:
        server.metrics.serve(cfg.metrics_port)
    log.info("%s: serving on %s (config %s, trim %s, compression %s, %d leaf replica(s))",
             cfg.name, ", ".join(server.endpoints), server.active.id, cfg.trim, cfg.compression,
             len(server.pool.links))
    server.run()
    log.info("%s: drained, exiting", cfg.name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
