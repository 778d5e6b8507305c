"""What `trimmer export` reads a model from, and the error every export step raises.

A source is a TorchScript file, a ``.pt2`` file holding an ExportedProgram
(``torch.export.save``), or ``package.module:callable`` returning an
``nn.Module`` (or a ``ScriptModule``); from Python, also a module itself. An AOTInductor package is not a
source: it carries compiled code, not the graph a signature is read from.
"""
from __future__ import annotations

import hashlib
import importlib
import io
import os
import re
import sys
import zipfile
from dataclasses import dataclass
from typing import Any

import torch

from signatures.repository.publish import ExportError


@dataclass
class Source:
    kind: str      # "module" (an nn.Module), "torchscript" or "program" (an ExportedProgram)
    model: Any
    file_bytes: bytes | None = None   # a TorchScript file's own bytes, kept as they are


def _archive_names(data: bytes) -> list[str]:
    try:
        return zipfile.ZipFile(io.BytesIO(data)).namelist()
    except zipfile.BadZipFile:
        return []


def _load_file(path: str) -> Source:
    with open(path, "rb") as f:
        data = f.read()
    names = _archive_names(data)
    if any("/data/aotinductor/" in n for n in names):
        raise ExportError(f"{path}: an AOTInductor package holds compiled code, not a graph to "
                          "derive the signature from: export the nn.Module (or its "
                          ".pt2 ExportedProgram) with --format aoti instead")
    program = path.endswith(".pt2") or any(
        n.endswith(("/models/model.json", "serialized_exported_program.json")) for n in names)
    if program:
        try:
            return Source("program", torch.export.load(io.BytesIO(data)))
        except Exception as exc:  # torch raises RuntimeError, ValueError, zip and schema errors
            raise ExportError(f"{path}: not a loadable torch.export program (.pt2) on torch "
                              f"{torch.__version__}: {exc}") from exc
    try:
        return Source("torchscript", torch.jit.load(io.BytesIO(data), map_location="cpu"), data)
    except Exception as exc:  # torch raises RuntimeError, ValueError, zip errors...
        raise ExportError(f"{path}: not a loadable TorchScript file: {exc}") from exc


def load_source(source: str | torch.nn.Module) -> Source:
    if isinstance(source, torch.jit.ScriptModule):
        return Source("torchscript", source)
    if isinstance(source, torch.nn.Module):
        return Source("module", source.eval())
    if os.path.exists(source):
        return _load_file(source)
    mod_name, sep, attr = source.partition(":")
    if not sep or not mod_name or not attr:
        raise ExportError(f"{source!r}: neither an existing TorchScript or .pt2 file nor "
                          "module:callable")
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
        return Source("torchscript", module)
    if not isinstance(module, torch.nn.Module):
        raise ExportError(f"{source}: returned {type(module).__name__}, expected an nn.Module")
    return Source("module", module.eval())


def describe(source: str | torch.nn.Module) -> str:
    """How provenance names a source: its path or module:callable, or a module's class."""
    if isinstance(source, torch.nn.Module):
        return f"{type(source).__module__}.{type(source).__qualname__} instance"
    return source


def scripted(source: str, src: Source) -> torch.jit.ScriptModule:
    if src.kind == "torchscript":
        return src.model
    try:
        return torch.jit.script(src.model)
    except Exception as exc:
        raise ExportError(f"{source}: torch.jit.script failed: {exc}") from exc


def module_bytes(module: torch.jit.ScriptModule) -> bytes:
    buf = io.BytesIO()
    torch.jit.save(module, buf)
    return buf.getvalue()


# What a saved TorchScript module's identity reads (`torchscript_identity`).
_PICKLED = re.compile(r"^(data\.pkl|constants\.pkl|data/.+)$")
_SOURCE_COMMENT = re.compile(r"[ \t]*#.*$", re.M)
_MANGLE = re.compile(r"___torch_mangle_\d+\.")


def torchscript_identity(data: bytes) -> str:
    """The identity of a saved TorchScript module, the same for the same
    module saved by any process: its weights and attribute values (the
    archive's pickled entries) and ``forward``'s inlined graph without source
    locations or name mangling. The archive's bytes are not: `torch.jit.save`
    writes a random serialization id, and class constants in hash order."""
    h = hashlib.sha256()
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        for name in sorted(z.namelist()):
            entry = name.split("/", 1)[-1]
            if _PICKLED.match(entry):
                h.update(entry.encode() + b"\0" + z.read(name) + b"\0")
    module = torch.jit.load(io.BytesIO(data), map_location="cpu")
    h.update(_MANGLE.sub("", _SOURCE_COMMENT.sub("", str(module.inlined_graph))).encode())
    return h.hexdigest()


__all__ = ["ExportError", "Source", "describe", "load_source", "module_bytes", "scripted",
           "torchscript_identity"]
