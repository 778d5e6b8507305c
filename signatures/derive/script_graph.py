"""Which features a TorchScript model reads, derived from its graph.

PyTorch models declare no input metadata, so the signature is read off the
code itself: every read of the ``features`` dict (``features["x"]``,
``features.get("x")``, ``"x" in features``, ``pop``/``setdefault``) in
``forward``'s inlined graph, which already contains helper methods and
submodules' ``forward``. Reads inside any branch count (a column the model
may read must be sent). A key must be a compile-time constant, an element of
a constant list of strings (``for n in ["a", "b"]``, a list attribute of the
module that the graph never mutates), a str attribute of the module or of a
submodule that the graph never assigns (``Tower("user_emb")`` reading
``features[self.key]``), a branch choosing between constants, or a
concatenation of those; anything else is refused with its source
location, because guessing would break the model on the first request that
takes that path.

Ragged features are read as ``"x.values"`` / ``"x.offsets"``; `feature_name`
maps such a key back to ``x``.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch

from _trim.errors import Refused
from signatures.schema import RAGGED_SUFFIXES

# Dict ops that read one key: (op name, index of the key argument).
READ_OPS = {"aten::__getitem__": 1, "aten::get": 1, "aten::__contains__": 1,
            "aten::pop": 1, "aten::setdefault": 1}
# Ops whose output is the same dict (or a copy holding the same keys).
ALIAS_OPS = {"aten::copy", "aten::dict"}
# List ops that only read a list: used to decide a list is never mutated.
LIST_READ_OPS = {"aten::len", "aten::__getitem__", "aten::__contains__", "prim::ListUnpack",
                 "aten::list", "aten::copy", "aten::count", "aten::index"}
MAX_KEYS_PER_SITE = 10_000  # bounds the cartesian product of concatenations


class DerivationError(Refused):
    """The graph reads the features dict in a way that cannot be derived."""


@dataclass
class Derivation:
    """Keys the graph reads, each with the places that read it, and the places
    where a key could not be resolved to constants."""

    keys: dict[str, list[str]] = field(default_factory=dict)
    dynamic: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return not self.dynamic

    def features(self) -> dict[str, list[str]]:
        """Feature name -> dict keys it was read as (ragged parts map to their feature)."""
        out: dict[str, list[str]] = {}
        for key in sorted(self.keys):
            out.setdefault(feature_name(key), []).append(key)
        return out


def feature_name(key: str) -> str:
    for suffix in RAGGED_SUFFIXES:
        if key.endswith(suffix) and len(key) > len(suffix):
            return key[: -len(suffix)]
    return key


_FILE_LINE = re.compile(r'File "([^"]+)", line (\d+)')


def where(node) -> str:
    """``file:line: code`` of a node, as short as the source range allows."""
    try:
        text = node.sourceRange()
    except RuntimeError:
        text = ""
    lines = text.splitlines()
    m = _FILE_LINE.search(text)
    code = ""
    for i, line in enumerate(lines):
        if "<--- HERE" in line and i > 0:
            code = lines[i - 1].strip()
            break
    if m:
        return f"{m.group(1)}:{m.group(2)}: {code}" if code else f"{m.group(1)}:{m.group(2)}"
    return f"{node.kind()} in the graph (no source location)"


def derive(module) -> Derivation:
    """Keys a scripted module's ``forward`` reads from its features dict."""
    if not isinstance(module, torch.jit.ScriptModule):
        raise TypeError(f"expected a TorchScript module, got {type(module).__name__}")
    try:
        graph = module.forward.inlined_graph if hasattr(module.forward, "inlined_graph") \
            else module.inlined_graph
    except RuntimeError as exc:
        raise DerivationError(f"cannot inline forward's graph: {exc}") from exc
    inputs = list(graph.inputs())
    if len(inputs) != 2 or not isinstance(inputs[1].type(), torch._C.DictType):
        raise DerivationError(
            "forward must take exactly one argument, features: Dict[str, Tensor]; "
            f"it takes ({', '.join(f'{v.debugName()}: {v.type()}' for v in inputs[1:])})")
    dict_type = inputs[1].type()
    if str(dict_type.getKeyType()) != "str" or str(dict_type.getValueType()) != "Tensor":
        raise DerivationError(f"forward's features must be Dict[str, Tensor], got {dict_type}")
    resolver = _Resolver(module, graph, inputs[0])
    result = Derivation()
    pending, seen = [inputs[1]], set()
    while pending:
        value = pending.pop()
        if value.unique() in seen:
            continue
        seen.add(value.unique())
        for use in value.uses():
            node = use.user
            kind = node.kind()
            if kind in READ_OPS and use.offset == 0:
                key_value = list(node.inputs())[READ_OPS[kind]]
                keys = resolver.strings(key_value)
                place = where(node)
                if keys is None:
                    result.dynamic.append(place)
                else:
                    for k in keys:
                        result.keys.setdefault(k, []).append(place)
            elif kind in ALIAS_OPS:
                pending.append(node.output())
            elif kind in ("aten::_set_item", "aten::__setitem__") and use.offset == 0:
                continue  # a write needs no column from the root
            else:
                result.dynamic.append(
                    f"{where(node)} (the features dict is passed to {kind}, which may read "
                    "any key)")
    return result


class _Resolver:
    """Resolves a graph Value to the set of strings it can take, or None."""

    def __init__(self, module, graph, self_value):
        self.module = module
        self.graph = graph
        self.self_value = self_value

    def strings(self, value) -> set[str] | None:
        node = value.node()
        kind = node.kind()
        if kind == "prim::Constant":
            v = value.toIValue()
            return {v} if isinstance(v, str) else None
        if kind == "prim::GetAttr" and str(value.type()) == "str":
            # A str cannot be changed in place, only reassigned.
            if not self._attribute_never_assigned(value):
                return None
            v = self._attribute(value)
            return {v} if isinstance(v, str) else None
        if kind == "aten::__getitem__":
            container, _ = node.inputs()
            return self.list_strings(container)
        if kind == "aten::add" and str(value.type()) == "str":
            a, b = (self.strings(v) for v in node.inputs())
            if a is None or b is None or len(a) * len(b) > MAX_KEYS_PER_SITE:
                return None
            return {x + y for x in a for y in b}
        if kind == "prim::If":
            # a value chosen by a branch: any branch's constant may be the key
            i = [o.unique() for o in node.outputs()].index(value.unique())
            out: set[str] = set()
            for block in node.blocks():
                got = self.strings(list(block.outputs())[i])
                if got is None:
                    return None
                out |= got
            return out
        return None

    def list_strings(self, value) -> set[str] | None:
        node = value.node()
        kind = node.kind()
        if str(value.type()) != "List[str]" and not str(value.type()).startswith("Tuple"):
            return None
        if kind == "prim::Constant":
            v = value.toIValue()
            if isinstance(v, (list, tuple)) and all(isinstance(x, str) for x in v):
                return set(v)
            return None
        if not self._never_mutated(value):
            return None
        if kind in ("prim::ListConstruct", "prim::TupleConstruct"):
            out: set[str] = set()
            for item in node.inputs():
                got = self.strings(item)
                if got is None:
                    return None
                out |= got
            return out
        if kind == "prim::GetAttr":
            if not (self._attribute_never_mutated(value) and self._attribute_never_assigned(value)):
                return None
            v = self._attribute(value)
            if isinstance(v, (list, tuple)) and all(isinstance(x, str) for x in v):
                return set(v)
        return None

    def _never_mutated(self, value) -> bool:
        return all(u.user.kind() in LIST_READ_OPS or u.user.kind() == "prim::Loop"
                   for u in value.uses())

    def _chain(self, value):
        names = []
        while value.node().kind() == "prim::GetAttr":
            names.append(value.node().s("name"))
            value = value.node().input()
        return tuple(names), value

    def _attribute_never_mutated(self, value) -> bool:
        # Another read of the same attribute may append to it elsewhere in forward.
        chain = self._chain(value)[0]
        nodes = self.graph.findAllNodes("prim::GetAttr", True)
        return all(self._never_mutated(n.output()) for n in nodes
                   if self._chain(n.output())[0] == chain)

    def _attribute_never_assigned(self, value) -> bool:
        # `self.a.b = ...` is a SetAttr "b" on the object `self.a` reads: once
        # forward has run, the attribute may hold something else.
        chain = self._chain(value)[0]
        for node in self.graph.findAllNodes("prim::SetAttr", True):
            target = self._chain(node.inputsAt(0))[0]
            if (node.s("name"),) + target == chain:
                return False
        return True

    def _attribute(self, value):
        """Python value of a ``self.a.b`` attribute chain, or None."""
        names = []
        while value.node().kind() == "prim::GetAttr":
            names.append(value.node().s("name"))
            value = value.node().input()
        if value is not self.self_value and value.unique() != self.self_value.unique():
            return None
        obj = self.module
        for name in reversed(names):
            try:
                obj = getattr(obj, name)
            except AttributeError:
                return None
        return obj


def check_explicit(derivation: Derivation, explicit) -> list[str]:
    """Problems with an author's explicit feature list against what the graph
    reads: constant reads missing from the list, and, when every read is
    constant, listed features the graph never reads."""
    explicit = set(explicit)
    read = derivation.features()
    problems = []
    missing = sorted(set(read) - explicit)
    for name in missing:
        problems.append(f"the graph reads {name!r} (at {read_places(derivation, name)[0]}) "
                        "but the explicit feature list lacks it")
    if derivation.complete:
        for name in sorted(explicit - set(read)):
            problems.append(f"{name!r} is in the explicit feature list but the graph never "
                            "reads it (every key is constant, so the list is not needed)")
    return problems


def read_places(derivation: Derivation, name: str) -> list[str]:
    places = []
    for key in derivation.features().get(name, []):
        places += derivation.keys[key]
    return places


__all__ = ["Derivation", "DerivationError", "check_explicit", "derive", "feature_name", "where"]
