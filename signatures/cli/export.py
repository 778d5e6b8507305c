"""trimmer export: a model into the repository, with its derived signature."""
from __future__ import annotations

import argparse

from _trim.errors import TrimmerError
from signatures.derive.exporter import FORMATS, export
from signatures.repository import open_repository
from signatures.repository.module_info import AOTI_DEVICES
from signatures.runtime.exit_codes import exit_for
from signatures.schema import FeatureSchema


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="trimmer export",
        description="Derive the features a model reads from its graph (TorchScript or "
                    "torch.export), dry-run it on synthetic inputs from the feature schema, and "
                    "write the artifact (model.pt or model.pt2) + module_info.json into the "
                    "repository.")
    p.add_argument("source", help="TorchScript file, .pt2 file of an ExportedProgram, or "
                                  "module:callable returning an nn.Module")
    p.add_argument("--repo", required=True, help="model repository: a directory, or an object "
                                                 "store URL (s3://BUCKET/PREFIX, any fsspec URL)")
    p.add_argument("--model", required=True, help="model name")
    p.add_argument("--version", help="version (default: one past the highest numeric version)")
    p.add_argument("--schema", required=True, help="feature schema (JSON or TOML)")
    p.add_argument("--format", dest="fmt", choices=FORMATS,
                   help="artifact: torchscript (default; model.pt), export (a torch.export "
                        "program, model.pt2; the default for a .pt2 source) or aoti (an "
                        "AOTInductor package compiled for --device, model.pt2)")
    p.add_argument("--device", choices=AOTI_DEVICES,
                   help="device the AOTInductor package is compiled for (--format aoti; "
                        "default cpu; cuda needs a GPU on this machine)")
    p.add_argument("--features", help="explicit comma-separated feature list, for models that "
                                      "read computed keys; still checked against the graph")
    p.add_argument("--no-sub-feature", dest="sub_feature", action="store_false",
                   help="declare every feature read whole, even where the graph provably reads "
                        "only a constant slice of it or casts it to bfloat16/float16 on entry "
                        "(docs/signatures.md, what a model reads of a feature)")
    p.add_argument("--fork", metavar="NEW_NAME",
                   help="export as a new model NEW_NAME (a different input set is a fork)")
    return p


def _described(spec) -> str:
    """``pin_emb``, or what of it the model reads: ``pin_emb[0:64] as bfloat16``."""
    if spec.read is None:
        return spec.name
    parts = "".join(f"[{a}:{b}]" for a, b in spec.read.ranges or ())
    return f"{spec.name}{parts}{' as ' + spec.read.dtype if spec.read.dtype else ''}"


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    features = None
    if args.features is not None:
        features = [f.strip() for f in args.features.split(",") if f.strip()]
    try:
        schema = FeatureSchema.load(args.schema)
        before = set(open_repository(args.repo).versions(args.fork or args.model))
        info = export(args.source, args.repo, args.model, schema, version=args.version,
                      features=features, fork=args.fork, fmt=args.fmt, device=args.device,
                      sub_feature=args.sub_feature)
    except TrimmerError as exc:
        return exit_for("export", exc)
    if info.version in before:
        print(f"{info.key} already exported ({info.artifact.describe()}, the same signature "
              f"{info.signature_hash[:12]} and program): nothing written")
        return 0
    took = []
    if "export_s" in info.provenance:
        took.append(f"traced in {info.provenance['export_s']} s")
    if "compile_s" in info.provenance:
        took.append(f"compiled in {info.provenance['compile_s']} s")
    print(f"exported {info.key} as {info.artifact.describe()}"
          f"{' (' + ', '.join(took) + ')' if took else ''}: {len(info.inputs)} features "
          f"({', '.join(_described(s) for s in info.inputs)}), "
          f"signature {info.signature_hash[:12]}")
    return 0
