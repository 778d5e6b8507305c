"""``python -m leafproc`` / ``trimmer leaf``: run a leaf process.

Example::

    python -m leafproc --repo models/ --model ctr@3 --bind ipc:///run/trim/leaf-0.ipc \\
        --name leaf-0 --metrics-port 9101

Settings may also come from ``--config leaf.json`` (leafproc/settings.py:
``{"repo": "...", "models": ["ctr@3"], "bind": [...]}``); the command line
overrides the file. The leaf itself is leafproc/app.py: settings, then build,
run, close.

Exit status: 0 after a clean drain on SIGTERM or SIGINT (also one that
arrives while the leaf is starting, and whatever dispositions it inherited);
2 when it cannot start with the settings given (bad settings, an unknown
model, an unreadable key file or store, an endpoint it cannot bind, no CUDA
for ``--device cuda``), with a message saying why.
"""
from __future__ import annotations

import argparse
import logging
import sys

from _trim.errors import ConfigError
from leafproc.settings import LeafSettings
from signatures.runtime.settings import add_arguments, load
from signatures.runtime.stop_signals import DeferredStop

CANNOT_START = 2


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="trimmer leaf", description="Run a leaf: score trimmed batches.")
    add_arguments(p, LeafSettings)
    return p


def parse_args(argv: list[str]) -> LeafSettings:
    """The leaf's settings from ``argv`` (``--config`` then flags); ConfigError
    listing every problem."""
    return load(LeafSettings, build_parser().parse_args(argv))


def main(argv: list[str] | None = None) -> int:
    starting = DeferredStop().install()
    try:
        settings = parse_args(sys.argv[1:] if argv is None else argv)
    except ConfigError as exc:
        print(f"trimmer leaf: {exc}", file=sys.stderr)
        return CANNOT_START
    logging.basicConfig(level=settings.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s leaf %(process)d %(levelname)s %(message)s")
    # torch loads in seconds: only once the settings are known to be usable.
    from _trim.memory import keep_large_buffers
    from leafproc.app import Leaf
    # A forward's activations reuse the last batch's pages instead of
    # faulting fresh ones in (tests/torchrec/test_heap.py).
    keep_large_buffers()

    try:
        leaf = Leaf.build(settings)
    except ConfigError as exc:
        logging.getLogger("leafproc").error("%s", exc)
        return CANNOT_START
    # build installed the server's own handlers; one that came before is passed on.
    assert leaf.server is not None, "built"
    starting.hand_to(leaf.server.request_stop)
    try:
        return leaf.run()
    finally:
        leaf.close()


if __name__ == "__main__":
    sys.exit(main())
