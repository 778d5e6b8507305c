"""trimmer diff: features added and removed per model and leaf, and the byte impact."""
from __future__ import annotations

import argparse

from _trim.errors import TrimmerError
from signatures.bundle import Bundle
from signatures.runtime.exit_codes import exit_for
from signatures.savings import DEFAULT_LIST_LEN, DEFAULT_ROWS, diff, format_diff
from signatures.schema import FeatureSchema


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="trimmer diff", description=__doc__)
    p.add_argument("old")
    p.add_argument("new")
    p.add_argument("--schema", help="feature schema: adds bytes per request to each change")
    p.add_argument("--rows", type=int, default=DEFAULT_ROWS)
    p.add_argument("--list-len", type=int, default=DEFAULT_LIST_LEN)
    return p


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    try:
        old, new = Bundle.load(args.old), Bundle.load(args.new)
        schema = FeatureSchema.load(args.schema) if args.schema else None
        diffs = diff(old, new, schema, args.rows, args.list_len)
    except TrimmerError as exc:
        return exit_for("diff", exc)
    print(format_diff(diffs, old, new, args.rows))
    return 0
