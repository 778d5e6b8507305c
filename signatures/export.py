"""Export a model into the repository with the signature derived from its graph.

Steps: load (TorchScript file, or ``module:callable`` returning an nn.Module
that is scripted here), derive the keys it reads, map them onto the feature
schema, dry-run it on synthetic inputs holding exactly those features, then
publish ``model.pt`` + ``module_info.json`` under the immutability rules:
a written version never changes, and every version of a model has the same
signature hash (a different input set is a fork, a new model name).
"""
from __future__ import annotations

import datetime
import hashlib
import importlib
import io
import os
import shutil
import sys

import numpy as np
import torch

from _trim.errors import Refused

from .derive import Derivation, DerivationError, check_explicit, derive, read_places
from .fsutil import fsync_dir, locked
from .module_info import (
    INFO_NAME,
    MODEL_NAME,
    ModelRepository,
    ModuleInfo,
    TensorSpec,
    check_name,
    sha256_file,
    version_sort_key,
)
from .schema import FeatureSchema

DRY_RUN_ROWS = (1, 5)  # one row catches models that squeeze the row axis away


class ExportError(Refused):
    """The model cannot be exported; the message says why and what to do."""


# -- loading ------------------------------------------------------------------

def load_model(source: str) -> tuple[torch.jit.ScriptModule, bytes | None]:
    """(scripted module, original file bytes when ``source`` is a TorchScript file)."""
    if os.path.exists(source):
        with open(source, "rb") as f:
            data = f.read()
        try:
            return torch.jit.load(io.BytesIO(data), map_location="cpu"), data
        except Exception as exc:  # torch raises RuntimeError, ValueError, zip errors...
            raise ExportError(f"{source}: not a loadable TorchScript file: {exc}") from exc
    mod_name, sep, attr = source.partition(":")
    if not sep or not mod_name or not attr:
        raise ExportError(f"{source!r}: neither an existing TorchScript file nor module:callable")
    # Like `python -m`: a module:callable names code in the current directory.
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        obj = importlib.import_module(mod_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise ExportError(f"{source}: cannot import: {exc}") from exc
    try:
        module = obj() if callable(obj) and not isinstance(obj, torch.nn.Module) else obj
    except Exception as exc:
        raise ExportError(f"{source}: calling it raised {type(exc).__name__}: {exc}") from exc
    if isinstance(module, torch.jit.ScriptModule):
        return module, None
    if not isinstance(module, torch.nn.Module):
        raise ExportError(f"{source}: returned {type(module).__name__}, expected an nn.Module")
    try:
        return torch.jit.script(module.eval()), None
    except Exception as exc:
        raise ExportError(f"{source}: torch.jit.script failed: {exc}") from exc


def module_bytes(module: torch.jit.ScriptModule) -> bytes:
    buf = io.BytesIO()
    torch.jit.save(module, buf)
    return buf.getvalue()


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

def synthetic_inputs(schema: FeatureSchema, names, rows: int, seed: int = 0) -> dict:
    """Inputs as the leaf builds them (docs/signatures.md, model convention)."""
    rng = np.random.default_rng(seed)
    out: dict[str, torch.Tensor] = {}
    for name in names:
        f = schema[name]
        n_rows = 1 if f.per_request else rows
        if f.ragged:
            lengths = rng.integers(0, 4, size=n_rows)
            offsets = np.concatenate(([0], np.cumsum(lengths))).astype(np.int64)
            out[f"{name}.values"] = torch.from_numpy(_values(f, (int(offsets[-1]),), rng))
            out[f"{name}.offsets"] = torch.from_numpy(offsets)
        else:
            t = torch.from_numpy(_values(f, (n_rows,) + f.shape, rng))
            out[name] = t.expand((rows,) + f.shape) if f.per_request else t
    return out


def _values(feature, shape, rng) -> np.ndarray:
    dtype = np.dtype(feature.dtype)
    op = feature.transform.get("op")
    if op == "hash":
        return rng.integers(0, feature.transform["buckets"], size=shape).astype(dtype)
    if dtype.kind == "f":
        return rng.standard_normal(shape).astype(dtype)
    if dtype.kind == "b":
        return rng.integers(0, 2, size=shape).astype(bool)
    return rng.integers(0, 10, size=shape).astype(dtype)


def dry_run(module, schema: FeatureSchema, names, rows_list=DRY_RUN_ROWS) -> None:
    for rows in rows_list:
        inputs = synthetic_inputs(schema, names, rows)
        try:
            with torch.inference_mode():
                out = module(inputs)
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


# -- publishing ---------------------------------------------------------------

def feature_diff(old: ModuleInfo, new: ModuleInfo) -> str:
    o = {s.name: s for s in old.inputs}
    n = {s.name: s for s in new.inputs}
    lines = [f"+ {k}" for k in sorted(set(n) - set(o))]
    lines += [f"- {k}" for k in sorted(set(o) - set(n))]
    lines += [f"~ {k}: {o[k].to_dict()} -> {n[k].to_dict()}"
              for k in sorted(set(o) & set(n)) if o[k] != n[k]]
    if [s.output_dict() for s in old.outputs] != [s.output_dict() for s in new.outputs]:
        lines.append("~ outputs differ")
    return "\n".join(lines)


def next_version(repo: ModelRepository, model: str) -> str:
    numeric = [int(v) for v in repo.versions(model) if v.isdigit()]
    return str(max(numeric, default=0) + 1)


def publish(repo: ModelRepository, data: bytes, info: ModuleInfo) -> str:
    """Write a version under the immutability rules; returns its directory.

    Re-publishing identical bytes is a no-op, so a retried export succeeds.
    """
    os.makedirs(repo.root, exist_ok=True)
    with locked(os.path.join(repo.root, ".lock")):
        target = repo.version_dir(info.model, info.version)
        if os.path.exists(os.path.join(target, INFO_NAME)):
            old = ModuleInfo.load(target)
            old_sha = sha256_file(os.path.join(target, MODEL_NAME))
            if old_sha == info.artifact_sha256 and old.signature_hash == info.signature_hash:
                return target
            raise ExportError(
                f"{info.key} already exists with different "
                f"{'bytes' if old_sha != info.artifact_sha256 else 'signature'}; a version "
                f"is immutable once written: export it as a new version "
                f"(next free: {next_version(repo, info.model)})")
        for version in repo.versions(info.model):
            old = repo.info(info.model, version)
            if old.signature_hash != info.signature_hash:
                raise ExportError(
                    f"{info.key} reads different features than {old.key}; every version of "
                    f"a model must have the same signature (hash {old.signature_hash[:12]}, "
                    f"this one {info.signature_hash[:12]}). Feature diff:\n"
                    f"{feature_diff(old, info)}\n"
                    f"A different input set is a new model: fork it with "
                    f"`trimmer export ... --fork NEW_NAME`.")
            break  # all versions share one hash, checked when each was written
        # Build the version beside its final place, then rename it in whole:
        # a crash leaves a hidden temp directory, never a half-written version.
        parent = os.path.dirname(target)
        os.makedirs(parent, exist_ok=True)
        tmp = os.path.join(parent, f".tmp-{info.version}-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
        try:
            with open(os.path.join(tmp, MODEL_NAME), "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            info.write(tmp)
            fsync_dir(tmp)
            if os.path.exists(target):  # an empty leftover without module_info.json
                shutil.rmtree(target)
            os.rename(tmp, target)
            fsync_dir(parent)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return target


def export(source: str, repo_root, model: str, schema: FeatureSchema, version: str | None = None,
           features: list[str] | None = None, fork: str | None = None) -> ModuleInfo:
    """Export ``source`` as ``model`` (or as the fork ``fork``); returns its ModuleInfo."""
    repo = ModelRepository(repo_root)
    check_name("model name", model)
    name = model
    if fork is not None:
        check_name("fork name", fork)
        if fork == model:
            raise ExportError("--fork must name a new model, not the model itself")
        name = fork
    if version is not None:
        check_name("model version", version)
    module, file_bytes = load_model(source)
    try:
        derivation = derive(module)
    except DerivationError as exc:
        raise ExportError(f"cannot derive the signature: {exc}") from exc
    names = required_features(derivation, schema, features)
    dry_run(module, schema, names)
    data = file_bytes if file_bytes is not None else module_bytes(module)
    version = version or next_version(repo, name)
    info = ModuleInfo(
        model=name, version=version,
        inputs=[TensorSpec.from_feature(schema[n]) for n in names],
        artifact_sha256=_sha256(data),
        provenance={
            "torch": torch.__version__,
            "python": sys.version.split()[0],
            "created": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "source": source,
            "derived": "explicit list" if features is not None else "graph",
            "schema_fingerprint": schema.fingerprint,
            **({"forked_from": model} if fork is not None else {}),
        })
    publish(repo, data, info)
    return repo.info(name, version)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


__all__ = ["ExportError", "dry_run", "export", "feature_diff", "load_model", "next_version",
           "publish", "required_features", "synthetic_inputs", "version_sort_key"]
