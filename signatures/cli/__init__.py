"""The ``trimmer`` command: a dispatcher over subcommand modules.

Each subcommand lives in the package that owns it and is imported only when
run, so ``trimmer --help`` stays fast and the control plane (this package)
never imports the data plane (rootproc, leafproc) at import time. A
subcommand module exposes ``main(argv: list[str]) -> int``.
"""
from __future__ import annotations

import importlib
import sys

from signatures.runtime.exit_codes import EXIT_POLICY, EXIT_USAGE

# name -> (module, one-line help).
COMMANDS: dict[str, tuple[str, str]] = {
    # control plane
    "export": ("signatures.cli.export", "export a model with its derived signature into a repository"),
    "bundle": ("signatures.cli.bundle",
               "build a bundle (model version -> required features) from a placement"),
    "report": ("signatures.cli.report",
               "bytes per request with all features vs trimmed, per leaf and model"),
    "diff": ("signatures.cli.diff", "features added and removed between two bundles"),
    "deploy": ("signatures.cli.stages", "put a bundle on a stage as its root config"),
    "deploy-models": ("signatures.cli.stages",
                      "put model versions on a stage (config must be there first)"),
    "promote": ("signatures.cli.stages", "copy one stage's active config and models to another"),
    "rollback": ("signatures.cli.stages", "return a stage to its previous config"),
    "status": ("signatures.cli.stages", "what each stage runs, and who is on it"),
    "keys": ("signatures.cli.keys", "generate CURVE key pairs for authenticated, encrypted tcp links"),
    # data plane
    "leaf": ("leafproc.__main__", "run a leaf process"),
    "root": ("rootproc.__main__", "run a root process"),
    "score": ("rootproc.client.loadgen", "drive scoring load against roots and print latency"),
    "store": ("rootproc.featurestore.cli", "load or synthesise the feature store"),
    "health": ("rootproc.client.health", "check a root or leaf endpoint (exit 0 healthy, 1 not)"),
    "demo": ("rootproc.demo", "run the whole node under supervisord and compare modes"),
}


def usage() -> str:
    width = max(len(n) for n in COMMANDS)
    lines = ["usage: trimmer COMMAND [ARGS...]", "",
             "Feature Trimmer: send each leaf only the features its model reads.", "",
             "commands:"]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, help_) in sorted(COMMANDS.items())]
    lines += ["", "Run `trimmer COMMAND --help` for a command's options.", "", EXIT_POLICY]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"trimmer: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return EXIT_USAGE
    module = importlib.import_module(COMMANDS[name][0])
    # Modules serving several commands take the command name first.
    if getattr(module, "MULTI_COMMAND", False):
        return int(module.main([name] + rest) or 0)
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
