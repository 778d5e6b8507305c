"""Writing a model version into the repository, under the immutability rules:
a written version never changes, and every version of a model has the same
signature hash (a different input set is a fork, a new model name)."""
from __future__ import annotations

import os
import shutil

from _trim.errors import Refused
from signatures.repository.module_info import Artifact, ModelRepository, ModuleInfo
from signatures.runtime.files import fsync_dir, locked


class ExportError(Refused):
    """The model cannot be exported (its signature cannot be derived, or the
    repository refuses the version); the message says why and what to do.
    Defined with publishing, the export's last step, so that derivation
    (signatures/derive/) depends on the repository and never the reverse."""


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
    """Write a version under the immutability rules; returns its directory (URL).

    Re-publishing identical bytes is a no-op, so a retried export succeeds;
    so is re-publishing the same traced program as the same kind of artifact
    (an exported program or AOTInductor package is not byte-reproducible).
    A directory is locked for the whole check and write; an object store
    cannot be, and writes ``module_info.json`` last, only if absent
    (signatures/repository/objects.py).
    """
    if repo.remote:
        return _checked(repo, data, info) or repo.write_version(data, info)  # type: ignore[attr-defined]
    os.makedirs(repo.root, exist_ok=True)
    with locked(os.path.join(repo.root, ".lock")):
        return _checked(repo, data, info) or _write_directory(repo, data, info)


def _checked(repo: ModelRepository, data: bytes, info: ModuleInfo) -> str | None:
    """The version's place when it already holds this export; ExportError when
    the rules refuse it; None when it may be written."""
    if repo.has(info.model, info.version):
        old = repo.info(info.model, info.version)
        old_sha = repo.artifact_sha256(info.model, info.version)
        if old.signature_hash == info.signature_hash and (
                old_sha == info.artifact_sha256 or _same_program(old.artifact, info.artifact)):
            return repo.version_dir(info.model, info.version)
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
    return None


def _write_directory(repo: ModelRepository, data: bytes, info: ModuleInfo) -> str:
    # Build the version beside its final place, then rename it in whole:
    # a crash leaves a hidden temp directory, never a half-written version.
    target = repo.version_dir(info.model, info.version)
    parent = os.path.dirname(target)
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, f".tmp-{info.version}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    try:
        with open(os.path.join(tmp, info.artifact.file), "wb") as f:
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


def _same_program(old: Artifact, new: Artifact) -> bool:
    """The same traced program, built into the same kind of artifact the same way."""
    return bool(old.program_sha256) and old == new


__all__ = ["feature_diff", "next_version", "publish"]
