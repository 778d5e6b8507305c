"""What a model reads of each feature, derived from its graph (_trim/reads.py).

Every use of a feature's input tensor in the graph (TorchScript, inlined, or
``torch.export``'s ATen graph) is followed through the ops that keep a known
part of it: a slice of the one per-row dimension with constant bounds
(``x[:, a:b:s]``, ``x[..., a:b]``, ``narrow``), a constant position
(``x[:, 5]``), a constant index tensor (``x[:, [0, 3, 7]]``,
``index_select``: a literal, a lifted constant, or a buffer the graph only
ever uses as an index), a cast to bfloat16 or float16, and the whole-row
slice ``x[:, ...]`` that indexing inserts. Where a value leaves those ops
(passed to anything else, returned from a branch, viewed, reshaped, sliced
on the row dimension), that value's positions are read at its dtype. The
read is the union of those positions, narrowed only if every read is of the
same narrower cast. Reading shape metadata (``x.shape[0]``, ``x.dim()``)
reads no values. A read site whose key is one of several (a loop over a
constant list of names) reads each of them as the site's uses say, each at
its own width. Anything not provable (a bound that is not a constant, a key
not resolved to constants, ``features.get``, the features dict passed
whole) reads the feature whole. Ragged features are always read whole.

The leaf must then hand the model a tensor of the declared shape and dtype
whose read positions hold the read values (rounded through the cast, which
widening back to the declared dtype keeps exact) and whose other positions
hold anything: `garbled` builds such an input, and the model's output on it
is bit-identical to its output on the original.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from _trim.reads import NARROWER_FLOATS, FeatureRead
from signatures.derive.script_graph import ALIAS_OPS, READ_OPS, _Resolver
from signatures.schema import FeatureSchema

NARROW = {torch.bfloat16: "bfloat16", torch.float16: "float16"}
# TorchScript ScalarType codes of the narrower floats.
SCALAR_TYPES = {15: "bfloat16", 5: "float16", 6: "float32", 7: "float64"}
MAX_DEPTH = 64
_NOT = object()   # not a constant


@dataclass(frozen=True)
class _State:
    """A value derived from a feature: the feature positions its position
    dimension holds (None: all, in order), that dimension (None: selected
    away, or the feature has none), its rank, and the cast it went through."""

    pos: tuple | None
    pdim: int | None
    rank: int
    dtype: str | None


@dataclass(frozen=True)
class Op:
    """One use of a value, in terms both graph kinds share. ``kind``:
    neutral (reads no values), alias, cast (``dtype``), slice (``start``,
    ``end``, ``step``), narrow (``start``, ``length``), select (``index``),
    take (``indices``: constant, ``wrap``: negative ones count from the end)."""

    kind: str
    out: object = None
    dim: object = 0
    start: object = None
    end: object = None
    step: object = 1
    length: object = None
    index: object = None
    indices: tuple | None = None
    wrap: bool = True
    dtype: str | None = None


class _Reads:
    def __init__(self):
        self.positions: set[int] = set()
        self.all = False
        self.dtypes: set[str | None] = set()

    def read(self, st: _State) -> None:
        if st.pos is None:
            self.all = True
        else:
            self.positions.update(st.pos)
        self.dtypes.add(st.dtype)

    def result(self, feature) -> FeatureRead | None:
        ranges = None
        if not self.all and self.positions:
            ranges = FeatureRead.from_positions(self.positions).ranges
            if ranges == ((0, feature.shape[0]),):
                ranges = None
        dtype = next(iter(self.dtypes)) if len(self.dtypes) == 1 else None
        if dtype is not None and feature.dtype not in NARROWER_FLOATS[dtype]:
            dtype = None
        return FeatureRead(ranges, dtype) if ranges is not None or dtype is not None else None


def _step(op: Op, st: _State, width: int):
    """The state of ``op.out``, or None when ``op`` reads ``st``'s value."""
    if op.kind == "alias":
        return st
    if op.kind == "cast":
        return replace(st, dtype=op.dtype) if st.dtype is None and op.dtype in NARROWER_FLOATS \
            else None
    dim = op.dim
    if not isinstance(dim, int) or not -st.rank <= dim < st.rank:
        return None
    dim %= st.rank
    if dim == 0 and op.kind == "slice":   # rows: only the whole-row slice keeps everything
        full = op.start in (None, 0) and op.step == 1 and (
            op.end is None or (isinstance(op.end, int) and op.end >= 2 ** 62))
        return st if full else None
    if st.pdim is None or dim != st.pdim:
        return None
    current = st.pos if st.pos is not None else tuple(range(width))
    n = len(current)
    pdim: int | None = st.pdim
    rank = st.rank
    if op.kind == "slice":
        start, end, step = op.start, op.end, op.step
        if not (start is None or isinstance(start, int)) or not (
                end is None or isinstance(end, int)) or not isinstance(step, int) or step < 1:
            return None
        picked: list[int] = list(range(n))[start:end:step]
    elif op.kind == "narrow":
        if not isinstance(op.start, int) or not isinstance(op.length, int):
            return None
        start = op.start + n if op.start < 0 else op.start
        if not (0 <= start and 0 <= op.length and start + op.length <= n):
            return None
        picked = list(range(start, start + op.length))
    elif op.kind == "select":
        if not isinstance(op.index, int) or not -n <= op.index < n:
            return None
        picked, pdim, rank = [op.index % n], None, rank - 1
    elif op.kind == "take" and op.indices is not None:
        if not all((-n if op.wrap else 0) <= i < n for i in op.indices):
            return None
        picked = [i % n for i in op.indices]
    else:
        return None
    return _State(tuple(current[i] for i in picked), pdim, rank, st.dtype)


def _walk(uses, value, st: _State, width: int, reads: _Reads, depth: int = 0) -> None:
    if depth > MAX_DEPTH:
        reads.read(st)
        return
    for op in uses(value):
        if op is not None and op.kind == "neutral":
            continue
        nxt = None if op is None else _step(op, st, width)
        if nxt is None:
            reads.read(st)
        else:
            _walk(uses, op.out, nxt, width, reads, depth + 1)


def _start(feature) -> _State:
    vector = len(feature.shape) == 1
    return _State(None, 1 if vector else None, 1 + len(feature.shape), None)


def _derive(feature, values, uses) -> FeatureRead | None:
    if feature.ragged or not values:
        return None
    reads = _Reads()
    width = feature.shape[0] if len(feature.shape) == 1 else 0
    for value in values:
        _walk(uses, value, _start(feature), width, reads)
    return reads.result(feature)


# -- TorchScript --------------------------------------------------------------

SCRIPT_NEUTRAL = {"aten::size", "aten::dim", "aten::len", "aten::numel", "prim::device",
                  "prim::dtype", "prim::layout"}


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
        read = _derive(schema[name], values, lambda v: [consts.op(u) for u in v.uses()])
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
            return got if isinstance(got, int) else _NOT
        return _NOT

    def indices(self, v) -> tuple | None:
        """The constant 1-D integer tensor ``v`` holds, or None."""
        node = v.node()
        t = None
        if node.kind() == "prim::Constant":
            t = v.toIValue()
        elif node.kind() == "aten::tensor" and self._only_indexes(v):
            data, dtype = list(node.inputs())[:2]
            items = self.value(data)
            if items is _NOT and data.node().kind() == "prim::ListConstruct":
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
        return Op("cast", out, dtype=SCALAR_TYPES.get(code)) if isinstance(code, int) else None


# -- torch.export -------------------------------------------------------------

def _aten(name: str):
    packet, _, overload = name.partition(".")
    return getattr(getattr(torch.ops.aten, packet), overload)


EXPORT_NEUTRAL = {_aten(n) for n in ("sym_size.int", "sym_numel.default", "dim.default",
                                     "_assert_tensor_metadata.default")}
EXPORT_ALIAS = {_aten(n) for n in ("alias.default", "detach.default")}
EXPORT_CASTS = {_aten(n) for n in ("to.dtype", "to.dtype_layout", "to.device",
                                   "_to_copy.default")}
# Ops an index constant may pass through on its way to the index (none changes a value).
INDEX_PASS = {_aten(n) for n in ("lift_fresh_copy.default", "detach.default", "detach_.default",
                                 "clone.default", "alias.default")}
INDEX_USERS = {_aten("index_select.default"), _aten("index.Tensor")}


def program_reads(program: torch.export.ExportedProgram, schema: FeatureSchema,
                  keys: list[str]) -> dict[str, FeatureRead]:
    """Feature -> what the program's graph reads of it (``keys``: its inputs, in order)."""
    from torch.export.graph_signature import InputKind
    specs = program.graph_signature.input_specs
    user = [s for s in specs if s.kind == InputKind.USER_INPUT]
    nodes = {n.name: n for n in program.graph.nodes if n.op == "placeholder"}
    consts = _ExportConstants(program)
    out = {}
    for key, spec in zip(keys, user):
        if key not in schema:   # a ragged part: read whole
            continue
        read = _derive(schema[key], [nodes[spec.arg.name]],
                       lambda n: [consts.op(n, u) for u in n.users])
        if read is not None:
            out[key] = read
    return out


class _ExportConstants:
    def __init__(self, program):
        from torch.export.graph_signature import InputKind
        sig = program.graph_signature
        mutated = set(sig.buffers_to_mutate.values())
        self.tensors = {}
        for s in sig.input_specs:
            if s.kind == InputKind.CONSTANT_TENSOR or (s.kind == InputKind.BUFFER
                                                       and s.target not in mutated):
                t = program.constants.get(s.target, program.state_dict.get(s.target))
                self.tensors[s.arg.name] = t

    def indices(self, node) -> tuple | None:
        while isinstance(node, torch.fx.Node) and node.op == "call_function" and \
                node.target in INDEX_PASS and self._only_indexes(node):
            node = node.args[0]
        if not isinstance(node, torch.fx.Node) or node.op != "placeholder" or \
                not self._only_indexes(node):
            return None
        t = self.tensors.get(node.name)
        if isinstance(t, torch.Tensor) and t.dim() == 1 and t.dtype in (torch.int64, torch.int32):
            return tuple(int(i) for i in t.tolist())
        return None

    @staticmethod
    def _only_indexes(node) -> bool:
        """``node`` is only ever an index (or passed on to be one), so never changed."""
        return all(u.op == "call_function" and (
            u.target in INDEX_PASS or u.target is _aten("_assert_tensor_metadata.default") or
            (u.target in INDEX_USERS and u.args[0] is not node)) for u in node.users)

    def op(self, node, user) -> Op | None:
        if user.op != "call_function":
            return None
        target = user.target
        if target in EXPORT_NEUTRAL:
            return Op("neutral")
        schema = getattr(target, "_schema", None)
        if schema is None or not user.args or user.args[0] is not node or \
                any(a is node for a in list(user.args[1:]) + list(user.kwargs.values())):
            return None
        a = _arguments(schema, user.args, user.kwargs)
        if target in EXPORT_ALIAS:
            return Op("alias", user)
        if target in EXPORT_CASTS:
            dtype = a.get("dtype")
            if dtype is None and target is _aten("_to_copy.default"):
                return Op("alias", user)
            return Op("cast", user, dtype=NARROW.get(dtype)) if dtype is not None else None
        if target is _aten("slice.Tensor"):
            return Op("slice", user, a["dim"], start=a["start"], end=a["end"], step=a["step"])
        if target is _aten("narrow.default"):
            return Op("narrow", user, a["dim"], start=a["start"], length=a["length"])
        if target is _aten("select.int"):
            return Op("select", user, a["dim"], index=a["index"])
        if target is _aten("index_select.default"):
            return Op("take", user, a["dim"], indices=self.indices(a["index"]), wrap=False)
        if target is _aten("index.Tensor"):
            given = [i for i, t in enumerate(a["indices"]) if t is not None]
            if len(given) != 1:
                return None
            return Op("take", user, given[0], indices=self.indices(a["indices"][given[0]]))
        return None


def _arguments(schema, args, kwargs) -> dict:
    out = {}
    for i, formal in enumerate(schema.arguments):
        if i < len(args):
            out[formal.name] = args[i]
        elif formal.name in kwargs:
            out[formal.name] = kwargs[formal.name]
        elif formal.has_default_value():
            out[formal.name] = formal.default_value
    return out


# -- the property a read must have ----------------------------------------------

def garbled(inputs: dict, reads: dict[str, FeatureRead], fill: float = float("nan")) -> dict:
    """``inputs`` as a leaf may hand them to the model: each read feature's
    unread positions set to ``fill`` (-7777 in an integer feature) and its
    read ones rounded through its cast."""
    out = dict(inputs)
    for name, read in reads.items():
        x = inputs[name].clone()
        if read.dtype is not None:
            x = x.to(getattr(torch, read.dtype)).to(x.dtype)
        if read.ranges is not None:
            keep = torch.zeros(x.shape[-1], dtype=torch.bool)
            for start, stop in read.ranges:
                keep[start:stop] = True
            x[..., ~keep] = fill if x.is_floating_point() else -7777
        out[name] = x
    return out


__all__ = ["garbled", "program_reads", "script_reads"]
