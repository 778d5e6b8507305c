"""Export a model into the repository with the signature derived from its graph.

Steps: load the source (signatures/derive/sources.py), derive the keys it reads
(the TorchScript graph, signatures/derive/script_graph.py, or the torch.export graph,
signatures/derive/export_graph.py), map them onto the feature schema, build the
artifact (a TorchScript file, an exported program, or an AOTInductor package
compiled from it), dry-run it on synthetic inputs holding exactly those
features as a leaf loads it, then publish it with ``module_info.json``
(signatures/repository/publish.py). The signature depends only on the features read,
never on the format: the same model exported as TorchScript and as a program
has one signature hash.
"""
from __future__ import annotations

import dataclasses
import datetime
import hashlib
import os
import sys
import tempfile
import time
from collections.abc import Callable

import numpy as np
import torch

from _trim.reads import FeatureRead
from signatures.derive.export_graph import (
    compile_aoti,
    derive_program,
    export_program,
    program_bytes,
    program_sha256,
    program_source,
)
from signatures.derive.export_reads import program_reads
from signatures.derive.feature_reads import garbled
from signatures.derive.script_graph import Derivation, DerivationError, check_explicit, derive, read_places
from signatures.derive.script_reads import script_reads
from signatures.derive.sources import (
    ExportError,
    Source,
    describe,
    load_source,
    module_bytes,
    scripted,
    torchscript_identity,
)
from signatures.derive.synthetic import input_keys, synthetic_inputs
from signatures.derive.torchrec_model import TorchRecModel, export_torchrec, uses_torchrec
from signatures.repository import artifacts, open_repository
from signatures.repository.module_info import (
    AOTI_DEVICES,
    ARTIFACT_FILES,
    Artifact,
    ModelRepository,
    ModuleInfo,
    TensorSpec,
    check_name,
    version_sort_key,
)
from signatures.repository.publish import feature_diff, next_version, publish
from signatures.schema import FeatureSchema

FORMATS = tuple(ARTIFACT_FILES)   # torchscript, export, aoti
DRY_RUN_ROWS = (1, 5)  # one row catches models that squeeze the row axis away
# An exported program or package must score like the module it came from:
# |artifact - module| <= SCORE_ATOL + SCORE_RTOL * |module| on the dry run.
# Compiled kernels may reorder float sums; they must not change a score more.
SCORE_RTOL = 1e-4
SCORE_ATOL = 1e-5
Reads = dict[str, FeatureRead]


# -- signature ----------------------------------------------------------------

def required_features(derivation: Derivation, schema: FeatureSchema,
                      explicit: list[str] | None = None) -> list[str]:
    """The features the model needs, in schema order; ExportError listing every problem."""
    problems = []
    if explicit is None and not derivation.complete:
        problems += [f"the features dict is read with a key that is not a constant at {p}"
                     for p in derivation.dynamic]
        problems.append("make the keys constant, or pass the full list with --features "
                        "(it is still checked against the constant reads)")
    if explicit is not None:
        problems += check_explicit(derivation, explicit)
    read = derivation.features()
    wanted = list(explicit) if explicit is not None else list(read)
    for name in wanted:
        if name not in schema:
            at = read_places(derivation, name)
            problems.append(f"the model reads {name!r}{f' (at {at[0]})' if at else ''} "
                            "but the feature schema has no such feature")
            continue
        feature = schema[name]
        for key in read.get(name, []):
            if feature.ragged and key == name:
                problems.append(f"{name!r} is ragged: the model must read {name}.values and "
                                f"{name}.offsets, not features[{name!r}] "
                                f"(at {derivation.keys[key][0]})")
            elif not feature.ragged and key != name:
                problems.append(f"{name!r} is dense: read it as features[{name!r}], not "
                                f"{key!r} (at {derivation.keys[key][0]})")
    if problems:
        raise ExportError("cannot derive the signature:\n  - " + "\n  - ".join(problems))
    return [n for n in schema.names if n in set(wanted)]


# -- dry run ------------------------------------------------------------------

def dry_run(model: Callable, schema: FeatureSchema, names, rows_list=DRY_RUN_ROWS, *,
            reference: Callable | None = None, device: str = "cpu") -> None:
    """``model`` must return one float score per row; with ``reference`` (the
    module an artifact came from), the same scores within the tolerance."""
    for rows in rows_list:
        inputs = synthetic_inputs(schema, names, rows)
        try:
            with torch.inference_mode():
                out = model({k: v.to(device) for k, v in inputs.items()})
        except Exception as exc:
            msg = str(exc).strip()
            raise ExportError(f"dry run on {rows} synthetic row(s) holding only the derived "
                              f"features failed; the model raised {type(exc).__name__}: "
                              f"{msg}") from exc
        if not isinstance(out, torch.Tensor):
            raise ExportError(f"dry run: forward returned {type(out).__name__}, "
                              "expected a Tensor of scores")
        if tuple(out.shape) not in ((rows,), (rows, 1)) or not out.is_floating_point():
            raise ExportError(f"dry run on {rows} row(s): forward must return one float score "
                              f"per row, shape [{rows}] or [{rows}, 1]; got "
                              f"{out.dtype} of shape {list(out.shape)}")
        if reference is not None:
            with torch.inference_mode():
                want = reference(inputs).reshape(-1).to(torch.float64).numpy()
            got = out.reshape(-1).to("cpu", torch.float64).numpy()
            if not np.allclose(got, want, rtol=SCORE_RTOL, atol=SCORE_ATOL):
                worst = float(np.max(np.abs(got - want)))
                raise ExportError(f"dry run on {rows} row(s): the artifact's scores differ from "
                                  f"the module's by up to {worst:.3g} (allowed: {SCORE_ATOL} + "
                                  f"{SCORE_RTOL} x |score|)")


def check_reads(model, schema: FeatureSchema, names, reads: Reads, notes: dict) -> Reads:
    """``reads``, after checking that ``model`` scores synthetic rows
    bit-identically when only the derived reads of its features are real
    (`garbled`): the property that makes sending only them sound. A model
    whose scores vary from run to run cannot show it: every feature whole,
    and ``notes["sub_feature"]`` (kept in provenance) says why. ExportError
    when a read changes the scores (a derivation bug)."""
    for rows in DRY_RUN_ROWS if reads else ():
        inputs = synthetic_inputs(schema, names, rows, seed=rows)
        with torch.inference_mode():
            want = model(inputs)
            if not torch.equal(_bits(model(inputs)), _bits(want)):
                notes["sub_feature"] = ("every feature read whole: the model's scores vary "
                                        "between two runs on the same inputs")
                return {}
            for name in sorted(reads):
                got = model(garbled(inputs, {name: reads[name]}))
                if got.shape != want.shape or not torch.equal(_bits(got), _bits(want)):
                    raise ExportError(
                        f"the derived read of {name!r} ({reads[name].to_dict()}) changes the "
                        f"model's scores on {rows} synthetic row(s): the derivation is wrong "
                        "for this model (please report it); export it with --no-sub-feature to "
                        "declare every feature read whole")
    return reads


def _bits(t: torch.Tensor) -> torch.Tensor:
    t = t.detach().to("cpu").contiguous()
    return t.view(torch.uint8) if t.dtype != torch.bool else t


# -- building each format -------------------------------------------------------

def resolve_format(src: Source, fmt: str | None, device: str | None) -> str:
    """The format to build (default: TorchScript, or an exported program for a
    .pt2 source), after refusing what cannot be built from this source here."""
    fmt = fmt or ("export" if src.kind == "program" else "torchscript")
    if fmt not in FORMATS:
        raise ExportError(f"--format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    if device is not None and fmt != "aoti":
        raise ExportError(f"--device is for --format aoti (a {fmt} artifact is placed on the "
                          "leaf's device when it loads)")
    if device is not None and device not in AOTI_DEVICES:
        raise ExportError(f"--device must be one of {', '.join(AOTI_DEVICES)}, not {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise ExportError("--device cuda compiles for a GPU and this machine has no CUDA device "
                          f"(torch {torch.__version__}): compile on a machine with one, or "
                          "export --format export and let the leaf place it on its GPU")
    if fmt != "torchscript" and src.kind == "torchscript":
        raise ExportError(f"a TorchScript model cannot be exported as {fmt}: torch.export "
                          "traces Python code; export the nn.Module source "
                          "(package.module:callable) instead")
    if fmt == "torchscript" and src.kind == "program":
        raise ExportError("an exported program (.pt2) cannot become TorchScript: export it as "
                          "--format export or aoti, or export the nn.Module source")
    reason = artifacts.unsupported(fmt)
    if reason:
        raise ExportError(reason)
    return fmt


def _torchscript(source: str, src: Source, schema: FeatureSchema, explicit: list[str] | None,
                 sub_feature: bool) -> tuple[list[str], bytes, Artifact, dict, Reads]:
    module = scripted(source, src)
    try:
        derivation = derive(module)
    except DerivationError as exc:
        raise ExportError(f"cannot derive the signature: {exc}") from exc
    names = required_features(derivation, schema, explicit)
    dry_run(module, schema, names)
    data = src.file_bytes if src.file_bytes is not None else module_bytes(module)
    notes: dict = {}
    reads = check_reads(module, schema, names, script_reads(module, schema, names), notes) \
        if sub_feature else {}
    return names, data, Artifact(program_sha256=torchscript_identity(data)), notes, reads


def _program(src: Source, schema: FeatureSchema, explicit: list[str] | None, fmt: str,
             device: str, sub_feature: bool = False
             ) -> tuple[list[str], bytes, Artifact, dict, Reads]:
    t0, notes = time.monotonic(), dict[str, str]()
    if src.kind == "program":
        module, derivation = program_source(src.model)
    else:
        module, derivation = src.model, derive_program(src.model, schema)
    names = required_features(derivation, schema, explicit)
    program = export_program(module, schema, names, saved=src.kind == "program")
    reads = check_reads(program.module(), schema, names,
                        program_reads(program, schema, input_keys(schema, names)), notes) \
        if sub_feature else {}
    data = program_bytes(program)
    artifact = Artifact("export", program_sha256=program_sha256(data))
    timing = {"export_s": round(time.monotonic() - t0, 1), **notes}
    if fmt == "aoti":
        t1 = time.monotonic()
        data = compile_aoti(program, device)
        timing["compile_s"] = round(time.monotonic() - t1, 1)
        artifact = Artifact("aoti", device, torch.__version__, artifact.program_sha256)
    with tempfile.TemporaryDirectory(prefix="trimmer-export-") as tmp:
        path = os.path.join(tmp, artifact.file)
        with open(path, "wb") as f:
            f.write(data)
        model = artifacts.load(path, artifact, torch.device(device))
        dry_run(model, schema, names, reference=module, device=device)
    return names, data, artifact, timing, reads


def _torchrec(src: Source, schema: FeatureSchema, explicit: list[str] | None,
              fmt: str) -> tuple[list[str], bytes, Artifact, dict, Reads]:
    names, module, artifact, timing = export_torchrec(src.model, schema, fmt, explicit)
    if fmt == "export":   # the exported graph is derived and dry-run like any module's
        read, data, artifact, more, _ = _program(Source("module", module), schema, None, fmt,
                                                 "cpu")
        if read != names:
            raise ExportError(f"the exported TorchRec model reads {read}, not {names} as its "
                              "tables and input spec say")
        return names, data, dataclasses.replace(artifact, runtime="torchrec"), \
            {**timing, **more}, {}
    assert isinstance(module, torch.jit.ScriptModule)
    try:   # the scripted adapter's graph, checked against the signature like --features
        derived = derive(module)
        # Its grouped path reads the groups' columns ("", ".values", ".offsets": of a group it has not).
        grouped = {g.name for g in timing.get("groups", [])} | {"", ".values", ".offsets"}
        problems = check_explicit(derived, list(names) + [n for n in derived.features()
                                                          if n in grouped])
    except DerivationError as exc:
        problems = [str(exc)]
    if problems:
        raise ExportError("the scripted TorchRec model reads other features than its tables "
                          "and input spec say:\n  - " + "\n  - ".join(problems))
    pairs = list(timing["torchrec"]["weights_of"].items())

    def aligned(f: dict) -> torch.Tensor:   # synthetic weights: one per id, as real ones are
        for ids, weights in pairs:
            f[weights + ".values"] = torch.rand(len(f[ids + ".values"]))
            f[weights + ".offsets"] = f[ids + ".offsets"]
        return module(f)
    dry_run(aligned, schema, names)
    return names, module_bytes(module), artifact, timing, {}


def export(source: str | torch.nn.Module, repo_root, model: str, schema: FeatureSchema,
           version: str | None = None, features: list[str] | None = None, fork: str | None = None,
           fmt: str | None = None, device: str | None = None,
           sub_feature: bool = True) -> ModuleInfo:
    """Export ``source`` (see `load_source`) as ``model`` (or as the fork
    ``fork``) in format ``fmt`` (``device``: where an AOTInductor package
    runs); returns its ModuleInfo. ``sub_feature``: declare the part of a
    feature the graph reads (signatures/derive/feature_reads.py); False
    declares every feature read whole."""
    repo = open_repository(repo_root)
    check_name("model name", model)
    name = model
    if fork is not None:
        check_name("fork name", fork)
        if fork == model:
            raise ExportError("--fork must name a new model, not the model itself")
        name = fork
    if version is not None:
        check_name("model version", version)
    src = load_source(source)
    fmt = resolve_format(src, fmt, device)
    torchrec = src.kind == "module" and isinstance(src.model, TorchRecModel)
    if src.kind == "module" and not torchrec and uses_torchrec(src.model):
        raise ExportError("the model is built of TorchRec modules: export it as "
                          "signatures.derive.torchrec_model.TorchRecModel(model, TorchRecInputs("
                          "dense=[...], ...)), which says which schema features its dense "
                          "tensor and KeyedJaggedTensor keys come from (docs/signatures.md)")
    if torchrec:
        names, data, artifact, timing, reads = _torchrec(src, schema, features, fmt)
    elif fmt == "torchscript":
        names, data, artifact, timing, reads = _torchscript(describe(source), src, schema,
                                                            features, sub_feature)
    else:
        names, data, artifact, timing, reads = _program(src, schema, features, fmt,
                                                        device or "cpu", sub_feature)
    groups = timing.pop("groups", [])   # a TorchRec model's grouped columns
    info = ModuleInfo(
        model=name, version=version or next_version(repo, name), groups=groups,
        inputs=[dataclasses.replace(TensorSpec.from_feature(schema[n]), read=reads.get(n))
                for n in names],
        artifact_sha256=hashlib.sha256(data).hexdigest(), artifact=artifact,
        provenance={
            "torch": torch.__version__,
            "python": sys.version.split()[0],
            "created": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "source": describe(source),
            "derived": ("torchrec tables" if torchrec else
                        "explicit list" if features is not None else "graph"),
            **({} if sub_feature else {"sub_feature": False}),
            "schema_fingerprint": schema.fingerprint,
            **timing,
            **({"forked_from": model} if fork is not None else {}),
        })
    existing = already_exported(repo, info, version is None)
    if existing is not None:
        return existing
    publish(repo, data, info)
    return repo.info(name, info.version)


def already_exported(repo: ModelRepository, info: ModuleInfo, any_version: bool):
    """The version already holding what ``info`` describes (same signature,
    same file bytes or same program identity in the same kind of artifact):
    ``info``'s own version, or with ``any_version`` any of the model's; None
    if there is none. A retried export, in any process, answers it."""
    versions = repo.versions(info.model) if any_version else \
        [v for v in repo.versions(info.model) if v == info.version]
    for version in versions:
        try:
            old = repo.info(info.model, version)
        except Exception:   # a broken version is no match; publish says what is wrong
            continue
        if old.signature_hash != info.signature_hash:
            continue
        if old.artifact_sha256 == info.artifact_sha256:
            return old
        identity = old.artifact.program_sha256
        if not identity and old.artifact.kind == "torchscript":   # written before it was kept
            try:
                identity = torchscript_identity(repo.read_artifact(info.model, version))
            except Exception:
                continue
        if identity and dataclasses.replace(old.artifact, program_sha256=identity) == \
                info.artifact:
            return old
    return None


__all__ = ["DRY_RUN_ROWS", "FORMATS", "SCORE_ATOL", "SCORE_RTOL", "ExportError", "dry_run",
           "already_exported", "export", "feature_diff", "next_version", "publish", "required_features",
           "resolve_format", "synthetic_inputs", "version_sort_key"]
