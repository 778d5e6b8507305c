"""``python -m rootproc`` / ``trimmer root``: run a root process.

Exit status (`trimmer --help`): 0 after a clean drain on SIGTERM or SIGINT
(also one that arrives while the root is starting, or waiting for its
stage's first config, and whatever dispositions it inherited); 2 when it
cannot start with the settings given (the message lists every problem: a
bad setting, a key file it cannot read, an endpoint in use, shared memory
this host cannot give). The root itself is rootproc/app.py:
settings, then build, run, close.
"""
from __future__ import annotations

import argparse
import gc
import logging
import sys

from rootproc.settings import RootSettings
from signatures.runtime.settings import add_arguments, load
from signatures.runtime.stop_signals import DeferredStop


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
    from _trim.memory import install_pool, keep_large_buffers
    from rootproc.app import Root, StoppedWaiting
    keep_large_buffers()
    try:
        cfg = load(RootSettings, args)
        install_pool(cfg.buffer_pool_bytes)
        root = Root.build(cfg, stopping=lambda: starting.pending is not None)
    except StoppedWaiting:
        logging.getLogger("rootproc").info("stopped while waiting for a config; exiting")
        return 0
    except (TrimmerError, ValueError) as exc:
        print(f"trimmer root: {exc}", file=sys.stderr)
        return 2
    # Everything made so far (schema, plans, record programs) lives as long as
    # the process: out of the collector's way, each full collection is short.
    gc.freeze()
    # The server installs its own handlers as it starts serving; one that came before is passed on.
    assert root.server is not None, "built"
    starting.hand_to(root.server.request_stop)
    try:
        return root.run()
    finally:
        root.close()


if __name__ == "__main__":
    sys.exit(main())
