"""trimmer report: bytes per candidate and per request, all features vs trimmed."""
from __future__ import annotations

import argparse

from _trim.errors import TrimmerError
from signatures.bundle import Bundle
from signatures.runtime.exit_codes import exit_for
from signatures.savings import DEFAULT_LIST_LEN, DEFAULT_ROWS, format_table, plot, report
from signatures.schema import FeatureSchema


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="trimmer report", description=__doc__)
    p.add_argument("bundle")
    p.add_argument("--schema", required=True)
    p.add_argument("--rows", type=int, default=DEFAULT_ROWS, help="candidates per request")
    p.add_argument("--list-len", type=int, default=DEFAULT_LIST_LEN,
                   help="assumed values per row of a ragged feature")
    p.add_argument("--plot", metavar="OUT.png", help="write a bar chart")
    return p


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    try:
        bundle = Bundle.load(args.bundle)
        schema = FeatureSchema.load(args.schema)
        rows = report(bundle, schema, args.rows, args.list_len)
    except TrimmerError as exc:
        return exit_for("report", exc)
    print(f"bundle {bundle.id}, {len(schema)} schema features, {args.rows} candidates per "
          f"request, {args.list_len} values per ragged row")
    print(format_table(rows, args.rows))
    if args.plot:
        plot(rows, args.plot, args.rows)
        print(f"chart: {args.plot}")
    return 0
