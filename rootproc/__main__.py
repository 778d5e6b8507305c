"""``python -m rootproc`` / ``trimmer root``: run a root process.

Exit status (`trimmer --help`): 0 after a clean drain on SIGTERM or SIGINT
(also one that arrives while the root is starting, and whatever dispositions
it inherited); 2 when it cannot start with the settings given (the message
lists every problem: a bad setting, a key file it cannot read, an endpoint in
use, shared memory this host cannot give).
"""
from __future__ import annotations

import argparse
import gc
import logging
import sys

from rootproc.settings import RootSettings
from signatures.runtime.settings import add_arguments, load
from signatures.runtime.stop_signals import DeferredStop

log = logging.getLogger("rootproc")


def main(argv: list[str] | None = None) -> int:
    starting = DeferredStop().install()
    parser = argparse.ArgumentParser(prog="trimmer root", description="Run a root process: "
                                     "fetch, preprocess, trim and fan scoring requests out to leaves.")
    add_arguments(parser, RootSettings)
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    from _trim.errors import TrimmerError
    from _trim.memory import keep_large_buffers
    from rootproc.server import RootServer
    keep_large_buffers()
    try:
        cfg = load(RootSettings, args)
        server = RootServer(cfg)
    except (TrimmerError, ValueError) as exc:
        print(f"trimmer root: {exc}", file=sys.stderr)
        return 2
    # Everything made so far (schema, plans, record programs) lives as long as
    # the process: out of the collector's way, each full collection is short.
    gc.freeze()
    for exposure in cfg.exposures():
        log.warning("%s: %s", cfg.name, exposure)
    if cfg.metrics_port:
        server.metrics.serve(cfg.metrics_port, cfg.metrics_addr)
    log.info("%s: serving on %s (config %s, trim %s, compression %s, %d leaf replica(s))",
             cfg.name, ", ".join(server.endpoints), server.active.id, cfg.trim, cfg.compression,
             len(server.links.pool.links))
    starting.hand_to(server.request_stop)
    server.run()
    log.info("%s: drained, exiting", cfg.name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
