"""Which features a model reads, from its `torch.export` graph; and the
exported program a leaf serves.

With torch.export the inputs are explicit. The model is traced with every
feature of the schema as example inputs, a dict following the model
convention (docs/signatures.md): ``features["x"]`` of shape ``[rows, ...]``
with a dynamic row dimension (a per-request one too: the leaf expands it),
a ragged feature as ``x.values`` and ``x.offsets``, each with a dynamic size
of its own (a per-request list's offsets are always 2 long). The signature
is then exactly the features whose placeholders the graph uses. The model is
traced again with only those features: that program is the artifact, its
inputs the signature's, in the order the leaf builds the dict.

Sizes are traced size-obliviously, so the program holds for 0 and 1 rows and
empty lists, not only for sizes like the examples'. A model the exporter
cannot trace (data-dependent control flow without ``torch.cond``, keys
computed from data) gets the exporter's own error, where in the model it
arose, and the hint to export it as TorchScript.
"""
from __future__ import annotations

import collections.abc
import contextlib
import hashlib
import io
import logging
import os
import re
import tempfile
import traceback
import typing
import warnings
import zipfile
from typing import Any

import torch

from signatures.derive.script_graph import Derivation, feature_name
from signatures.derive.sources import ExportError
from signatures.derive.synthetic import input_keys, synthetic_inputs
from signatures.schema import FeatureSchema

EXAMPLE_ROWS = 5        # not 0 or 1, which tracing would take as special
EXAMPLE_MIN_LIST = 2    # every example list's total length is at least 2 as well
HINT = ("a model torch.export cannot trace can still be served: export it with "
        "--format torchscript")
SAVED_HINT = ("a saved program must hold for any row count and list length: export it with "
              "torch.export.Dim.DYNAMIC on dimension 0 of every input (docs/signatures.md), "
              "or export the nn.Module source")
# Entries of a saved program that differ between two saves of the same program.
_UNSTABLE_ENTRIES = re.compile(r"(serialization_id|sample_inputs/)")
_TORCH_DIR = os.path.dirname(torch.__file__)
_OWN_DIR = os.path.dirname(os.path.abspath(__file__))


def dynamic_shapes(schema: FeatureSchema, keys) -> dict:
    shapes: dict = {}
    for key in keys:
        feature = schema[feature_name(key)]
        per_request_offsets = feature.ragged and feature.per_request and key.endswith(".offsets")
        shapes[key] = None if per_request_offsets else {0: torch.export.Dim.DYNAMIC}
    return shapes


@contextlib.contextmanager
def _tracing():
    """Size-oblivious tracing, without the partial graphs and warnings torch
    prints when a trace fails: the error says what went wrong, and where."""
    import torch.fx.experimental._config as fx_config
    config: Any = fx_config   # torch's config module: its API is set up at import
    torch_log = logging.getLogger("torch")
    level = torch_log.level
    torch_log.setLevel(logging.ERROR)
    try:
        with config.patch(backed_size_oblivious=True), warnings.catch_warnings(), \
                contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        torch_log.setLevel(level)


def trace(module: torch.nn.Module, schema: FeatureSchema, names, *, derived: bool = False,
          saved: bool = False) -> torch.export.ExportedProgram:
    """``module`` exported with ``names`` as example inputs (dict in leaf order);
    ``derived``: ``names`` are what a trace with the whole schema found it
    reads; ``saved``: ``module`` is a saved program."""
    example = synthetic_inputs(schema, sorted(names), EXAMPLE_ROWS,
                               min_list_len=EXAMPLE_MIN_LIST, contiguous=True)
    try:
        with _tracing():
            return torch.export.export(module, (example,),
                                       dynamic_shapes=(dynamic_shapes(schema, example),))
    except Exception as exc:  # the exporter raises many types; each becomes one clear refusal
        raise _trace_error(exc, schema, derived, SAVED_HINT if saved else HINT) from exc


def _trace_error(exc: BaseException, schema: FeatureSchema, derived: bool,
                 hint: str) -> ExportError:
    at = _user_location(exc)
    at = f"\n  at {at}" if at else ""
    if isinstance(exc, KeyError) and isinstance(exc.args[0] if exc.args else None, str):
        key = exc.args[0]
        name = feature_name(key)
        if derived and name in schema:
            return _changes_with_keys(f"it reads {key!r}", at)
        if name in schema and schema[name].ragged and key == name:
            why = (f"{name!r} is ragged: the model must read {name}.values and "
                   f"{name}.offsets, not features[{name!r}]")
        elif name in schema and not schema[name].ragged:
            why = f"{name!r} is dense: read it as features[{name!r}], not {key!r}"
        else:
            why = f"the model reads {key!r} but the feature schema has no such feature"
        return ExportError(f"cannot derive the signature: {why}{at}")
    lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
    gist = lines[0] if lines else type(exc).__name__
    return ExportError(f"torch.export cannot trace the model: {type(exc).__name__}: "
                       f"{gist}{at}\n  {hint}")


_RAISED_AT = re.compile(r'File "([^"]+)", line (\d+), in \S+\n\s*(.+)')
_CAUSED_BY = re.compile(r"Caused by: \(?([^\s()]+\.py):(\d+) in ")


def _user_location(exc: BaseException) -> str:
    """``file:line: code`` in the model where the trace failed, if known: the
    call the exporter names, else the deepest frame of the model's own code."""
    text = str(exc)
    found = [m for m in _RAISED_AT.finditer(text) if not _ours(m.group(1))]
    if found:
        m = found[-1]
        return f"{m.group(1)}:{m.group(2)}: {m.group(3).strip()}"
    chain: list[BaseException] = []
    e: BaseException | None = exc
    while e is not None and e not in chain:
        chain.append(e)
        e = e.__cause__ or e.__context__
    for e in reversed(chain):   # the first error raised holds the model's frames
        frames = [f for f in traceback.extract_tb(e.__traceback__) if not _ours(f.filename)]
        if frames:
            f = frames[-1]
            return f"{f.filename}:{f.lineno}: {(f.line or '').strip()}".rstrip(": ")
    caused = _CAUSED_BY.search(text)
    if caused and not _ours(caused.group(1)):
        return f"{caused.group(1)}:{caused.group(2)}"
    return ""


def _ours(path: str) -> bool:
    """torch's own code, ours, or Python's: not where a model's problem is."""
    path = os.path.abspath(path) if os.path.isabs(path) else path
    return (path.startswith((_TORCH_DIR, _OWN_DIR)) or "/torch/" in path
            or path.startswith(("<", os.path.dirname(os.__file__))))


def used_features(program: torch.export.ExportedProgram, keys: list[str]) -> Derivation:
    """The dict keys whose placeholders the graph uses, each with where it is read."""
    from torch.export.graph_signature import InputKind
    specs = [s for s in program.graph_signature.input_specs if s.kind == InputKind.USER_INPUT]
    if len(specs) != len(keys):
        raise ExportError(f"the exported program takes {len(specs)} inputs for a dict of "
                          f"{len(keys)} tensors: forward must take one argument, features: "
                          "Dict[str, Tensor]")
    nodes = {n.name: n for n in program.graph.nodes if n.op == "placeholder"}
    derivation = Derivation()
    for key, spec in zip(keys, specs):
        node = nodes[spec.arg.name]
        if node.users:
            derivation.keys[key] = [_place(node)]
    return derivation


def written_inputs(program: torch.export.ExportedProgram, keys: list[str]) -> list[str]:
    """The dict keys the graph changes in place, directly or through a view:
    an op whose schema marks an argument written, on a value aliasing an input."""
    from torch.export.graph_signature import InputKind
    specs = [s for s in program.graph_signature.input_specs if s.kind == InputKind.USER_INPUT]
    root = {spec.arg.name: key for key, spec in zip(keys, specs)}   # node name -> input key
    written: set[str] = set()
    for node in program.graph.nodes:
        schema = getattr(node.target, "_schema", None) if node.op == "call_function" else None
        if schema is None:
            continue
        aliased = None
        for arg, formal in zip(node.args, schema.arguments):
            key = root.get(arg.name) if isinstance(arg, torch.fx.Node) else None
            if key is None or formal.alias_info is None:
                continue
            aliased = aliased or key
            if formal.alias_info.is_write:
                written.add(key)
        # A view (or an in-place op's result) aliases the input it came from.
        if aliased and any(r.alias_info is not None for r in schema.returns):
            root[node.name] = aliased
    return sorted(written)


def _place(node) -> str:
    for user in node.users:
        found = list(_RAISED_AT.finditer(user.meta.get("stack_trace") or ""))
        if found:   # the innermost frame: the line that reads the feature
            m = found[-1]
            return f"{m.group(1)}:{m.group(2)}: {m.group(3).strip()}"
    return f"input {node.name} of the exported graph"


def derive_program(module: torch.nn.Module, schema: FeatureSchema) -> Derivation:
    """Which features ``module`` reads: traced with every feature of the schema."""
    _check_forward(module)
    program = trace(module, schema, schema.names)
    return used_features(program, input_keys(schema, schema.names))


def _check_forward(module) -> None:
    import inspect
    try:
        params = list(inspect.signature(module.forward).parameters.values())
    except (TypeError, ValueError):
        return
    annotation = params[0].annotation if len(params) == 1 else None
    takes_dict = annotation in (None, inspect.Parameter.empty) or typing.get_origin(
        annotation) in (dict, collections.abc.Mapping) or annotation in (dict, "dict") or (
        isinstance(annotation, str) and annotation.lower().startswith(("dict", "typing.dict")))
    if len(params) != 1 or not takes_dict or params[0].kind not in (
            params[0].POSITIONAL_ONLY, params[0].POSITIONAL_OR_KEYWORD):
        raise ExportError("cannot derive the signature: forward must take exactly one argument, "
                          "features: Dict[str, Tensor]; it takes "
                          f"({', '.join(str(p) for p in params)})")


def export_program(module: torch.nn.Module, schema: FeatureSchema, names: list[str], *,
                   saved: bool = False) -> torch.export.ExportedProgram:
    """The program a leaf serves: ``module`` traced with exactly ``names``,
    which must then be exactly what its graph reads. ``saved``: ``module``
    is a saved program (`program_source`) and ``names`` the inputs it takes."""
    program = trace(module, schema, names, derived=not saved, saved=saved)
    written = written_inputs(program, input_keys(schema, names))
    if written:
        raise ExportError(
            f"the model writes to its input{'s' if len(written) > 1 else ''} "
            f"{', '.join(written)} in place: a compiled program writes straight into the "
            "leaf's input memory, which on a same-node link is a root's read-only shared "
            "memory; clone an input before changing it, or export it with --format torchscript "
            "(whose leaf copies such inputs)")
    read = set(used_features(program, input_keys(schema, names)).features())
    if read != set(names) and saved:
        unused = ", ".join(sorted(set(names) - read))
        raise ExportError(f"the program takes {unused} but its graph never reads them, so every "
                          "leaf would be sent them: export it again without them, or export "
                          "the nn.Module source")
    if read != set(names):
        raise _changes_with_keys(f"it reads {', '.join(sorted(read)) or 'none of them'}")
    return program


def _changes_with_keys(what: str, at: str = "") -> ExportError:
    return ExportError(
        "the model's graph changes with the keys the features dict holds: traced with only "
        f"the features it reads when the dict holds every feature, {what} (a test like "
        "`\"x\" in features` or features.get on a key it never reads?); read the keys "
        f"unconditionally, or export it with --format torchscript{at}")


class _Select(torch.nn.Module):
    """A saved program called with the leaf's dict: only the keys it takes, in its order."""

    def __init__(self, inner: torch.nn.Module, keys: list[str]):
        super().__init__()
        self.inner = inner
        self.keys = keys

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.inner({k: features[k] for k in self.keys})


def program_source(program: torch.export.ExportedProgram) -> tuple[torch.nn.Module, Derivation]:
    """A saved ExportedProgram as a module to export again, and the keys it takes."""
    from torch.utils import _pytree as pytree
    in_spec = program.call_spec.in_spec
    if in_spec is None:
        raise ExportError("the program has no input spec (saved by a torch without one)")
    args, kwargs = pytree.tree_unflatten(list(range(in_spec.num_leaves)), in_spec)
    if kwargs or len(args) != 1 or not isinstance(args[0], dict):
        raise ExportError("cannot derive the signature: the program must take one argument, "
                          "features: Dict[str, Tensor], as exported by "
                          "torch.export.export(model, (features,), ...)")
    keys = [k for k, _ in sorted(args[0].items(), key=lambda kv: kv[1])]
    derivation = Derivation(keys={k: ["an input of the saved program"] for k in keys})
    return _Select(program.module(), keys), derivation


def program_bytes(program: torch.export.ExportedProgram) -> bytes:
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.export.save(program, buf)
    return buf.getvalue()


def program_sha256(data: bytes) -> str:
    """Identity of a saved program: its entries but those that differ between saves."""
    h = hashlib.sha256()
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        for name in sorted(z.namelist()):
            if not _UNSTABLE_ENTRIES.search(name):
                h.update(name.split("/", 1)[-1].encode() + b"\0" + z.read(name) + b"\0")
    return h.hexdigest()


def compile_aoti(program: torch.export.ExportedProgram, device: str) -> bytes:
    """An AOTInductor package of ``program`` for ``device``."""
    if device == "cuda":
        from torch.export.passes import move_to_device_pass
        program = move_to_device_pass(program, "cuda")
    with tempfile.TemporaryDirectory(prefix="trimmer-aoti-") as tmp:
        path = os.path.join(tmp, "model.pt2")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch._inductor.aoti_compile_and_package(program, package_path=path)
        except Exception as exc:  # inductor raises many types (C++ compiler errors among them)
            raise ExportError(f"AOTInductor could not compile the program for {device}: "
                              f"{type(exc).__name__}: {str(exc).strip()[:2000]}") from exc
        with open(path, "rb") as f:
            return f.read()


__all__ = ["compile_aoti", "derive_program", "dynamic_shapes", "export_program",
           "program_bytes", "program_sha256", "program_source", "trace", "used_features"]
