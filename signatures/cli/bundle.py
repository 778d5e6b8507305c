"""trimmer bundle build: model version -> required features, from a placement."""
from __future__ import annotations

import argparse

from _trim.errors import TrimmerError
from signatures.bundle import build, load_placement
from signatures.repository import open_repository
from signatures.runtime.exit_codes import exit_for
from signatures.schema import FeatureSchema


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="trimmer bundle", description=__doc__)
    sub = p.add_subparsers(dest="action", required=True)
    b = sub.add_parser("build", help="build a bundle file")
    b.add_argument("--repo", required=True, help="model repository: a directory or an object "
                   "store URL (s3://BUCKET/PREFIX)")
    b.add_argument("--schema", required=True, help="feature schema (JSON or TOML)")
    b.add_argument("--placement", required=True,
                   help='JSON: {"leaves": {LEAF: {"endpoint", "current": [...], "pending": [...]}}}')
    b.add_argument("-o", "--out", required=True, help="bundle file to write")
    return p


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    try:
        schema = FeatureSchema.load(args.schema)
        bundle = build(open_repository(args.repo), schema, load_placement(args.placement))
        bundle.save(args.out)
    except TrimmerError as exc:
        return exit_for("bundle build", exc)
    print(f"bundle {bundle.id}: {len(bundle.models)} model versions "
          f"({sum(m.pending for m in bundle.models.values())} pending), "
          f"{len(bundle.leaves)} leaves -> {args.out}")
    return 0
