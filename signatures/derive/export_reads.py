"""What a `torch.export` program reads of each feature (signatures/derive/feature_reads.py)."""
from __future__ import annotations

import torch

from _trim.reads import FeatureRead
from signatures.derive.feature_reads import Op, derive_read
from signatures.schema import FeatureSchema


def _aten(name: str):
    packet, _, overload = name.partition(".")
    return getattr(getattr(torch.ops.aten, packet), overload)


EXPORT_NEUTRAL = {_aten(n) for n in ("sym_size.int", "sym_numel.default", "dim.default",
                                     "_assert_tensor_metadata.default")}
# Ops whose result holds the same values (a copy, or the same tensor).
EXPORT_ALIAS = {_aten(n) for n in ("alias.default", "detach.default", "clone.default",
                                   "contiguous.default")}
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
        read = derive_read(schema[key], [nodes[spec.arg.name]],
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
            if dtype is None:   # x.to(device): the same values
                return Op("alias", user)
            return Op("cast", user, dtype=str(dtype).removeprefix("torch."))
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


__all__ = ["program_reads"]
