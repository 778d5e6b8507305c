"""What a TorchScript model reads of each feature (signatures/derive/feature_reads.py)."""
from __future__ import annotations

import torch

from _trim.reads import FeatureRead
from signatures.derive.feature_reads import NOT_CONSTANT, Op, derive_read
from signatures.derive.script_graph import ALIAS_OPS, READ_OPS, _Resolver
from signatures.schema import FeatureSchema

# TorchScript ScalarType codes.
SCALAR_TYPES = {0: "uint8", 1: "int8", 2: "int16", 3: "int32", 4: "int64", 5: "float16",
                6: "float32", 7: "float64", 11: "bool", 15: "bfloat16"}
SCRIPT_NEUTRAL = {"aten::size", "aten::dim", "aten::len", "aten::numel", "prim::device",
                  "prim::dtype", "prim::layout"}
# Ops whose result holds the same values (a copy, or the same tensor).
SCRIPT_ALIAS = {"aten::contiguous", "aten::clone", "aten::detach"}


def script_reads(module: torch.jit.ScriptModule, schema: FeatureSchema,
                 names) -> dict[str, FeatureRead]:
    """Feature -> what ``module``'s inlined ``forward`` reads of it, for those read in part."""
    graph = module.forward.inlined_graph if hasattr(module.forward, "inlined_graph") \
        else module.inlined_graph
    inputs = list(graph.inputs())
    resolver = _Resolver(module, graph, inputs[0])
    sites: dict[str, list] = {}
    pending, seen = [inputs[1]], set()
    while pending:
        dict_value = pending.pop()
        if dict_value.unique() in seen:
            continue
        seen.add(dict_value.unique())
        for use in dict_value.uses():
            node, kind = use.user, use.user.kind()
            if kind in ALIAS_OPS:
                pending.append(node.output())
                continue
            if kind in ("aten::_set_item", "aten::__setitem__") and use.offset == 0:
                continue
            if kind not in READ_OPS or use.offset != 0:
                return {}   # the dict goes where any key may be read: all whole
            keys = resolver.strings(list(node.inputs())[READ_OPS[kind]])
            if keys is None:
                return {}
            if kind == "aten::__contains__":   # reads no values
                continue
            for key in keys:   # a site of several keys (a loop) reads each as it reads one
                sites.setdefault(key, []).append(
                    node.output() if kind == "aten::__getitem__" else None)
    consts = _ScriptConstants(resolver)
    out = {}
    for name in names:
        values = sites.get(name, [])
        if None in values:
            continue
        read = derive_read(schema[name], values, lambda v: [consts.op(u) for u in v.uses()])
        if read is not None:
            out[name] = read
    return out


class _ScriptConstants:
    def __init__(self, resolver: _Resolver):
        self.resolver = resolver

    def value(self, v):
        node = v.node()
        if node.kind() == "prim::Constant":
            return v.toIValue()
        if node.kind() == "prim::GetAttr" and str(v.type()) == "int" and \
                self.resolver._attribute_never_assigned(v):
            got = self.resolver._attribute(v)
            return got if isinstance(got, int) else NOT_CONSTANT
        return NOT_CONSTANT

    def indices(self, v) -> tuple | None:
        """The constant 1-D integer tensor ``v`` holds, or None."""
        node = v.node()
        t = None
        if node.kind() == "prim::Constant" and self._only_indexes(v):
            t = v.toIValue()
        elif node.kind() == "aten::tensor" and self._only_indexes(v):
            data, dtype = list(node.inputs())[:2]
            items = self.value(data)
            if items is NOT_CONSTANT and data.node().kind() == "prim::ListConstruct":
                items = [self.value(i) for i in data.node().inputs()]
            if isinstance(items, list) and all(isinstance(i, int) and not isinstance(i, bool)
                                               for i in items) and \
                    self.value(dtype) in (None, 3, 4):
                return tuple(items)
        elif node.kind() == "prim::GetAttr" and str(v.type()) == "Tensor":
            chain = self.resolver._chain(v)[0]
            same = [n.output() for n in self.resolver.graph.findAllNodes("prim::GetAttr", True)
                    if self.resolver._chain(n.output())[0] == chain]
            if self.resolver._attribute_never_assigned(v) and all(map(self._only_indexes, same)):
                t = self.resolver._attribute(v)
        if isinstance(t, torch.Tensor) and t.dim() == 1 and t.dtype in (torch.int64, torch.int32):
            return tuple(int(i) for i in t.tolist())
        return None

    def _only_indexes(self, v) -> bool:
        """``v`` is only ever an index of index_select or x[..., idx] (so never changed)."""
        for use in v.uses():
            kind = use.user.kind()
            if kind == "aten::index_select" and use.offset == 2:
                continue
            if kind == "prim::ListConstruct" and all(
                    u.user.kind() == "aten::index" and u.offset == 1
                    for u in use.user.output().uses()):
                continue
            return False
        return True

    def op(self, use) -> Op | None:
        node, kind = use.user, use.user.kind()
        if kind in SCRIPT_NEUTRAL:
            return Op("neutral")
        if use.offset != 0:
            return None
        args = [self.value(v) for v in node.inputs()]
        out = node.output() if node.outputsSize() == 1 else None
        if kind == "aten::slice" and len(args) == 5:
            return Op("slice", out, args[1], start=args[2], end=args[3], step=args[4])
        if kind == "aten::narrow":
            return Op("narrow", out, args[1], start=args[2], length=args[3])
        if kind == "aten::select" and len(args) == 3:
            return Op("select", out, args[1], index=args[2])
        if kind == "aten::index_select":
            return Op("take", out, args[1], indices=self.indices(list(node.inputs())[2]),
                      wrap=False)
        if kind == "aten::index":
            return self._index(node, out)
        if kind == "aten::to":
            return self._cast(node, out)
        if kind in SCRIPT_ALIAS:
            return Op("alias", out)
        return None

    def _index(self, node, out) -> Op | None:
        lst = list(node.inputs())[1].node()
        if lst.kind() != "prim::ListConstruct":
            return None
        items = list(lst.inputs())
        given = [i for i, v in enumerate(items) if self.value(v) is not None]
        if len(given) != 1:
            return None
        return Op("take", out, given[0], indices=self.indices(items[given[0]]))

    def _cast(self, node, out) -> Op | None:
        try:
            schema = torch._C.parse_schema(node.schema())
        except RuntimeError:
            return None
        names = [a.name for a in schema.arguments]
        if "dtype" not in names or "other" in names:
            return None
        code = self.value(list(node.inputs())[names.index("dtype")])
        if code is None:   # x.to(device): the same values
            return Op("alias", out)
        return Op("cast", out, dtype=SCALAR_TYPES.get(code)) if isinstance(code, int) else None


__all__ = ["script_reads"]
