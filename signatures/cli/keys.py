"""trimmer keys: CURVE key pairs for tcp links (see docs/operations.md, "Securing remote links").

    trimmer keys generate /etc/trimmer/keys/gpu-a     # gpu-a.key (public), gpu-a.key_secret (0600)
    trimmer keys public /etc/trimmer/keys/gpu-a.key   # the Z85 public key, for logs and checks
"""
from __future__ import annotations

import argparse
import sys


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="trimmer keys", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="action", required=True)
    gen = sub.add_parser("generate", help="write NAME.key (public) and NAME.key_secret (mode 0600)")
    gen.add_argument("path", nargs="+", metavar="DIR/NAME")
    show = sub.add_parser("public", help="print the Z85 public key of a key file")
    show.add_argument("file")
    return p


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    from _trim.errors import TrimmerError
    from _trim.transport import curve
    from signatures.runtime.exit_codes import exit_for
    try:
        if args.action == "generate":
            for path in args.path:
                public, secret = curve.generate(path)
                print(f"{public}\t(public: give it to the peers)")
                print(f"{secret}\t(secret: keep it on this host, mode 0600)")
        else:
            print(curve.load_public(args.file, "trimmer keys").decode("ascii"))
    except TrimmerError as exc:
        return exit_for("keys", exc)
    except OSError as exc:
        print(f"trimmer keys: {exc}", file=sys.stderr)
        return 1
    return 0


__all__ = ["main"]
