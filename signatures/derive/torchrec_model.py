"""TorchRec models (KeyedJaggedTensor in, embedding tables inside): their
signature from their tables, and the module they are served as.

A TorchRec model's forward takes a dense tensor and a KeyedJaggedTensor
(``torchrec.models.dlrm.DLRM.forward(dense_features, sparse_features)``), not
the features dict. `TorchRecModel` pairs it with its input spec
(`TorchRecInputs`): which schema feature each KJT key and each dense column
comes from. The export then

1. traces the model with ``torch.fx`` as TorchRec's inference path does
   (``torchrec.fx.symbolic_trace``) and finds the embedding tables the graph
   looks up (``EmbeddingBagCollection``: ``embedding_bags.<table>``,
   ``EmbeddingCollection``: ``embeddings.<table>``);
2. takes the KJT keys those tables read from their configs
   (``feature_names``): a collection the graph never calls reads nothing;
3. maps each key to a schema feature (the spec's ``sparse``, else the
   feature of the same name), refusing keys the schema lacks, and adds the
   spec's weight features (weighted collections) and dense columns;
4. wraps the traced model in `torchrec_adapter` (the features dict in, the
   KJT and the dense tensor built inside) and scripts it;
5. for a TorchScript artifact, lists the model's **groups** (`groups_of`):
   its KJT's ids (and weights) as one jagged grouped column, its dense
   columns as one dense grouped column, which a root sends a leaf that takes
   them so that the leaf hands the model views on the message
   (docs/protocol.md, "Grouped columns").

The artifact is TorchScript; ``--format export``/``aoti`` are refused
(docs/signatures.md, "TorchRec models"). torchrec is imported only here and
only when a TorchRec model is exported (`torchrec_runtime.require`).
"""
from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from _trim.groups import Group
from signatures.derive.sources import ExportError, module_bytes
from signatures.repository.module_info import Artifact
from signatures.repository.torchrec_runtime import TorchRecUnavailable, require
from signatures.schema import FeatureSchema

CALLS = ("dense_kjt", "kjt")


@dataclass(frozen=True)
class TorchRecInputs:
    """How schema features become a TorchRec model's inputs.

    ``dense``: schema features (dense, float; a vector one gives its W
    columns), side by side in this order, are the dense tensor
    ``[rows, D]``. ``sparse``: KJT key -> the ragged id feature it comes from
    (a key not named reads the feature of its own name). ``weights``: KJT key
    -> a ragged float feature holding one weight per id (for a weighted
    ``EmbeddingBagCollection``; a key without one weighs 1). ``call``:
    ``dense_kjt`` calls ``model(dense, kjt)``, ``kjt`` calls ``model(kjt)``.
    """

    dense: tuple[str, ...] = ()
    sparse: Mapping[str, str] = field(default_factory=dict)
    weights: Mapping[str, str] = field(default_factory=dict)
    call: str = "dense_kjt"


class TorchRecModel(torch.nn.Module):
    """What `trimmer export` takes for a TorchRec model: the model and its input spec."""

    def __init__(self, model: torch.nn.Module, inputs: TorchRecInputs):
        super().__init__()
        self.model = model
        self.inputs = inputs

    def forward(self, *args):
        return self.model(*args)


@dataclass(frozen=True)
class Table:
    collection: str          # the collection's path in the model
    name: str
    keys: tuple[str, ...]    # the KJT keys it reads (its config's feature_names)
    rows: int
    weighted: bool
    pooled: bool             # EmbeddingBagCollection (True) or EmbeddingCollection


@dataclass
class Plan:
    keys: list[str]                  # KJT keys read, in table order
    features: dict[str, str]         # key -> schema feature
    weights: dict[str, str]          # key -> weight feature
    dense: list[str]
    tables: list[Table]              # the tables the graph looks up
    unused: list[Table]              # tables of collections the graph never calls
    names: list[str]                 # the signature: schema features, schema order
    weighted: bool = False


def uses_torchrec(module: torch.nn.Module) -> bool:
    """A module built of TorchRec modules (without importing torchrec)."""
    return any(type(m).__module__.startswith("torchrec.") for m in module.modules())


def _collections(model: torch.nn.Module) -> dict[str, tuple[Any, list[Table]]]:
    from torchrec.modules.embedding_modules import EmbeddingBagCollection, EmbeddingCollection
    found = {}
    for path, m in model.named_modules():
        if isinstance(m, EmbeddingBagCollection):
            found[path] = (m, [Table(path, c.name, tuple(c.feature_names), c.num_embeddings,
                                     m.is_weighted(), True) for c in m.embedding_bag_configs()])
        elif isinstance(m, EmbeddingCollection):
            found[path] = (m, [Table(path, c.name, tuple(c.feature_names), c.num_embeddings,
                                     False, False) for c in m.embedding_configs()])
    return found


def trace(model: torch.nn.Module) -> torch.fx.GraphModule:
    import torchrec.fx
    try:
        return torchrec.fx.symbolic_trace(model)
    except Exception as exc:  # fx raises TraceError, TypeError, ... on untraceable Python
        raise ExportError(f"torchrec.fx.symbolic_trace failed on the TorchRec model "
                          f"({type(exc).__name__}: {exc}): TorchRec's inference path traces "
                          "the model with fx, so its forward must be fx-traceable") from exc


def tables_read(model: torch.nn.Module, traced: torch.fx.GraphModule) -> tuple[list[Table], list[Table]]:
    """(tables the traced graph looks up, tables it never does)."""
    called = {str(n.target) for n in traced.graph.nodes if n.op == "call_module"}
    used: list[Table] = []
    unused: list[Table] = []
    for path, (_, tables) in _collections(model).items():
        prefix = f"{path}." if path else ""
        for t in tables:
            sub = "embedding_bags" if t.pooled else "embeddings"
            (used if f"{prefix}{sub}.{t.name}" in called else unused).append(t)
    return used, unused


def plan(model: torch.nn.Module, spec: TorchRecInputs, schema: FeatureSchema,
         traced: torch.fx.GraphModule) -> Plan:
    """The signature and the adapter's layout; ExportError listing every problem."""
    if spec.call not in CALLS:
        raise ExportError(f"TorchRecInputs.call must be one of {', '.join(CALLS)}, not {spec.call!r}")
    used, unused = tables_read(model, traced)
    if not used:
        raise ExportError("the TorchRec model's graph looks up no EmbeddingBagCollection or "
                          "EmbeddingCollection table: nothing reads a KeyedJaggedTensor key")
    problems: list[str] = []
    keys: list[str] = []
    features: dict[str, str] = {}
    weights: dict[str, str] = {}
    weighted = any(t.weighted for t in used)
    for t in used:
        for key in t.keys:
            name = spec.sparse.get(key, key)
            if key not in features:
                keys.append(key)
                features[key] = name
            where = f"KJT key {key!r} (table {t.name!r} of {t.collection or 'the model'})"
            if name not in schema:
                problems.append(f"{where} maps to feature {name!r}, which the feature schema "
                                f"lacks; map it to one with TorchRecInputs(sparse={{{key!r}: ...}})")
                continue
            f = schema[name]
            if not f.ragged or f.dtype not in ("int64", "int32"):
                problems.append(f"{where} needs a ragged int64/int32 id feature; {name!r} is "
                                f"{f.kind} {f.dtype}")
            buckets = f.transform.get("buckets") if f.transform.get("op") == "hash" else None
            if buckets is not None and buckets > t.rows:
                problems.append(f"{where}: {name!r} hashes into {buckets} buckets but the table "
                                f"has {t.rows} rows")
    for key, wname in spec.weights.items():
        if key not in features:
            continue   # a key no table reads: its weights are not needed either
        if not weighted:
            problems.append(f"weights are given for {key!r} but no collection the graph calls "
                            "is weighted (EmbeddingBagCollection(is_weighted=True))")
        elif wname not in schema:
            problems.append(f"the weights of KJT key {key!r} map to feature {wname!r}, which "
                            "the feature schema lacks")
        elif not (schema[wname].ragged and schema[wname].dtype.startswith("float")):
            problems.append(f"the weights of {key!r}, {wname!r}, must be a ragged float feature")
        elif schema[wname].per_request != schema[features[key]].per_request:
            problems.append(f"the weights of {key!r}, {wname!r}, must be per-request exactly "
                            f"when {features[key]!r} is")
        else:
            weights[key] = wname
    for name in spec.dense:
        if name not in schema:
            problems.append(f"dense column {name!r} is not a feature of the schema")
        elif schema[name].ragged or not schema[name].dtype.startswith("float"):
            problems.append(f"dense column {name!r} must be a dense float feature")
    if spec.call == "dense_kjt" and not spec.dense:
        problems.append("call 'dense_kjt' needs dense columns (TorchRecInputs(dense=[...])); "
                        "a model without them is called as 'kjt'")
    if spec.call == "kjt" and spec.dense:
        problems.append("call 'kjt' passes no dense tensor, yet dense columns are given")
    if problems:
        raise ExportError("cannot derive the TorchRec model's signature:\n  - "
                          + "\n  - ".join(problems))
    wanted = set(features.values()) | set(weights.values()) | set(spec.dense)
    return Plan(keys, features, weights, list(spec.dense), used, unused,
                [n for n in schema.names if n in wanted], weighted)


# A dense group repeats its per-request members on every row (a [rows, D]
# tensor cannot mix broadcast and per-row columns): worth it for a few user
# scalars, not for a user embedding, which stays sent once and costs the leaf
# one copy of the dense tensor instead (bytes are what trimming is for).
MAX_BROADCAST_ROW_BYTES = 16


def groups_of(p: Plan, schema: FeatureSchema) -> tuple[list[str], list[Group]]:
    """(the KJT keys in the jagged group's order, the model's groups). The ids
    group: every key's feature, per-row keys first, then the per-request ones
    (one list each), when they are distinct int64 features; with the weights
    group of the same shape when the model is weighted and every key has its
    own float32 weight feature (else neither). The dense group: the dense
    columns, when they are distinct float32 features and the per-request ones
    (which the root then repeats on every row) add at most
    MAX_BROADCAST_ROW_BYTES a row. A model whose features do not fit keeps
    its members as columns of their own (the per-feature path)."""
    per_row = [k for k in p.keys if not schema[p.features[k]].per_request]
    keys = per_row + [k for k in p.keys if k not in per_row]
    n_pr = len(keys) - len(per_row)
    groups: list[Group] = []
    ids = [p.features[k] for k in keys]
    if len(set(ids)) == len(ids) and all(schema[m].dtype == "int64" for m in ids):
        weights = [p.weights.get(k, "") for k in keys]
        if not p.weighted:
            groups.append(Group("jagged", tuple(ids), n_pr))
        elif all(weights) and len(set(weights)) == len(weights) and all(
                schema[w].dtype == "float32" for w in weights):
            groups += [Group("jagged", tuple(ids), n_pr), Group("jagged", tuple(weights), n_pr)]
    broadcast = sum(4 * max(1, (schema[d].shape or (1,))[0])
                    for d in p.dense if schema[d].per_request)
    if p.dense and len(set(p.dense)) == len(p.dense) and all(
            schema[d].dtype == "float32" for d in p.dense) and broadcast <= MAX_BROADCAST_ROW_BYTES:
        groups.append(Group("dense", tuple(p.dense)))
    return keys, groups


def adapter(p: Plan, traced: torch.nn.Module, schema: FeatureSchema, call: str) -> torch.nn.Module:
    from signatures.derive.torchrec_adapter import CALLS as ADAPTERS
    per_row = [i for i, k in enumerate(p.keys) if not schema[p.features[k]].per_request]
    if call == "kjt" and not per_row:
        raise ExportError("every id feature the model reads is per-request and it has no dense "
                          "column: the number of candidates cannot be known")
    weight_names = sorted(set(p.weights.values()))
    weight_of = [weight_names.index(p.weights[k]) if k in p.weights else -1 for k in p.keys]
    return ADAPTERS[call](traced, p.keys, [p.features[k] for k in p.keys],
                          [schema[p.features[k]].per_request for k in p.keys],
                          weight_of, weight_names, p.weighted, p.dense,
                          per_row[0] if per_row else 0)


def export_torchrec(wrapped: TorchRecModel, schema: FeatureSchema, fmt: str,
                    explicit: list[str] | None) -> tuple[list[str], torch.nn.Module, Artifact, dict]:
    """(signature, the module to save, its Artifact, timing) for a TorchRec model: the
    scripted adapter for TorchScript, the eager one for torch.export to trace."""
    if fmt not in ("torchscript", "export"):
        raise ExportError(f"a TorchRec model cannot be exported as {fmt}: its artifact is "
                          "TorchScript (traced with torchrec.fx and scripted, TorchRec's own "
                          "inference path) or a torch.export program; use --format torchscript "
                          "or export")
    if explicit is not None:
        raise ExportError("--features is not for a TorchRec model: its signature comes from the "
                          "tables its graph looks up and its TorchRecInputs")
    try:
        require()
    except TorchRecUnavailable as exc:
        raise ExportError(str(exc)) from exc
    t0 = time.monotonic()
    model = wrapped.model.eval()
    traced = trace(model)
    p = plan(model, wrapped.inputs, schema, traced)
    groups: list[Group] = []
    if fmt == "export":
        if p.weighted:
            raise ExportError("a weighted collection cannot be exported as a torch.export "
                              "program here (the weights' length check is data-dependent): "
                              "use --format torchscript")
        # The eager model: torch.export traces it itself (non-strict), as TorchRec's IR does.
        module = adapter(p, model, schema, wrapped.inputs.call).eval()
    else:
        eager: Any = adapter(p, traced, schema, wrapped.inputs.call)
        keys, groups = groups_of(p, schema)
        jagged = [g.name for g in groups if g.kind == "jagged"]
        eager.grouped(jagged[0] if jagged else "", jagged[1] if len(jagged) > 1 else "",
                      next((g.name for g in groups if g.kind == "dense"), ""), keys,
                      groups[0].per_request if jagged else 0, all(t.pooled for t in p.tables))
        try:
            module = torch.jit.script(eager.eval())
        except ExportError:
            raise
        except Exception as exc:
            raise ExportError(f"torch.jit.script failed on the traced TorchRec model: {exc}") from exc
    timing = {"export_s": round(time.monotonic() - t0, 1),
              "torchrec": {"keys": {k: p.features[k] for k in p.keys}, "dense": p.dense,
                           "weights": p.weights, "call": wrapped.inputs.call,
                           "weights_of": {p.features[k]: w for k, w in p.weights.items()},
                           "unused_tables": [t.name for t in p.unused]},
              # Popped by the exporter into the signature (ModuleInfo.groups).
              "groups": groups}
    return p.names, module, Artifact(runtime="torchrec"), timing


__all__ = ["Plan", "Table", "TorchRecInputs", "TorchRecModel", "adapter", "export_torchrec",
           "module_bytes", "plan", "tables_read", "trace", "uses_torchrec"]
