"""The module a TorchRec model is served as: the features dict in, the
model's own call (dense tensor, KeyedJaggedTensor) inside.

Built by `signatures.derive.torchrec_model` from the input spec and the keys
the model's tables read, and scripted with the model (traced by
``torchrec.fx`` as TorchRec's inference path does). Imports torchrec: load
it only through `torchrec_model`, after `torchrec_runtime.require`.

Two paths, the message decides (docs/signatures.md, "TorchRec models"):

- **Grouped** (a root sends a leaf that takes grouped columns the model's
  groups, docs/protocol.md "Grouped columns"): the KeyedJaggedTensor is the
  jagged group's values and offsets as they are (weights: the weights
  group's values), its per-request keys one list each, looked up once
  (TorchRec's variable batch size: ``stride_per_key_per_rank`` and inverse
  indices mapping every row to that list) when every table is pooled; the
  dense tensor is the dense group, ``[rows, D]`` as it is. No copy. A model
  with an EmbeddingCollection (unpooled) cannot take a variable batch size,
  and on a CPU per-request lists shorter (together) than the KJT's key count
  are cheaper repeated than gathered: those are repeated for every row here
  (a copy of their ids only).
- **Per feature** (an older leaf, root or artifact: each feature its own
  column): a key's values and per-row lengths (offset differences) come from
  its ragged column, a per-request list is repeated for every row, the keys'
  values are concatenated in key order, the dense columns side by side as
  float32. One key's values, or one dense float32 matrix, is used as it is.
"""
# No `from __future__ import annotations`: TorchScript reads the class annotations as types.

from typing import Dict, List  # noqa: UP035 (TorchScript reads these)

import torch
from torch import Tensor
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor


def joined(tensors: List[Tensor], dim: int) -> Tensor:  # noqa: UP006
    """``torch.cat``, but one tensor is used as it is (a cat of one copies it)."""
    if len(tensors) == 1:
        return tensors[0]
    return torch.cat(tensors, dim)


class KJTInputs(torch.nn.Module):
    # TorchScript takes the element types of list attributes (which may be
    # empty) from these class annotations.
    keys: List[str]  # noqa: UP006
    features: List[str]  # noqa: UP006
    per_request: List[bool]  # noqa: UP006
    weight_of: List[int]  # noqa: UP006
    weight_names: List[str]  # noqa: UP006
    dense: List[str]  # noqa: UP006
    group_keys: List[str]  # noqa: UP006

    def __init__(self, model: torch.nn.Module, keys: List[str], features: List[str],  # noqa: UP006
                 per_request: List[bool], weight_of: List[int],  # noqa: UP006
                 weight_names: List[str], weighted: bool, dense: List[str],  # noqa: UP006
                 rows_index: int):
        super().__init__()
        self.model = model
        self.keys = keys                  # KJT keys, in order
        self.features = features          # each key's schema feature
        self.per_request = per_request    # sent once: repeated for every row
        self.weight_of = weight_of        # each key's index in weight_names, -1: weight 1
        self.weight_names = weight_names  # the weight features
        self.weighted = weighted          # the KJT carries weights
        self.dense = dense                # dense columns, in order
        self.rows_index = rows_index      # a per-row key: its offsets give the rows
        # The grouped path ("" : none): the groups' column names, the KJT keys in
        # the jagged group's order and how many of the last are per-request.
        self.ids_group = ""
        self.weights_group = ""
        self.dense_group = ""
        self.group_keys = []
        self.group_per_request = 0
        self.vbe = False                  # every table pooled: per-request lists looked up once

    def grouped(self, ids: str, weights: str, dense: str, keys: List[str],  # noqa: UP006
                per_request: int, vbe: bool) -> None:
        self.ids_group = ids
        self.weights_group = weights
        self.dense_group = dense
        self.group_keys = keys
        self.group_per_request = per_request
        self.vbe = vbe

    def rows(self, f: Dict[str, Tensor]) -> int:  # noqa: UP006
        if self.ids_group != "" and (self.ids_group + ".offsets") in f:
            n_pr = self.group_per_request
            return (f[self.ids_group + ".offsets"].shape[0] - 1 - n_pr) \
                // (len(self.group_keys) - n_pr)
        return f[self.features[self.rows_index] + ".offsets"].shape[0] - 1

    def grouped_kjt(self, f: Dict[str, Tensor], rows: int) -> KeyedJaggedTensor:  # noqa: UP006
        values = f[self.ids_group + ".values"]
        offsets = f[self.ids_group + ".offsets"]
        weights: Tensor | None = None
        if self.weights_group != "":
            weights = f[self.weights_group + ".values"]
            if weights.shape[0] != values.shape[0]:
                raise RuntimeError("the weights group holds " + str(weights.shape[0])
                                   + " values for " + str(values.shape[0]) + " ids")
        n_pr = self.group_per_request
        if n_pr == 0:
            return KeyedJaggedTensor(keys=self.group_keys, values=values, offsets=offsets,
                                     weights=weights, stride=rows)
        n_rows = len(self.group_keys) - n_pr
        # Looking a list up once costs a gather of every key's pooled rows
        # (TorchRec's inverse indices): worth it when the per-request lists
        # hold at least as many ids as the KJT has keys. On a CPU the count is
        # free to read; elsewhere (a sync) the lists are always looked up once.
        once = self.vbe
        if once and values.device.type == "cpu":
            once = values.shape[0] - int(offsets[n_rows * rows]) >= len(self.group_keys)
        if once:
            strides: List[List[int]] = []  # noqa: UP006
            for i in range(len(self.group_keys)):
                strides.append([rows] if i < n_rows else [1])
            index = torch.cat([torch.arange(rows, device=values.device).expand(n_rows, rows),
                               torch.zeros([n_pr, rows], dtype=torch.int64,
                                           device=values.device)])
            return KeyedJaggedTensor(keys=self.group_keys, values=values, offsets=offsets,
                                     weights=weights, stride_per_key_per_rank=strides,
                                     inverse_indices=(self.group_keys, index))
        # An unpooled table cannot take one list for all rows: repeated here (a copy).
        lengths = offsets[1:] - offsets[:-1]
        start = int(offsets[n_rows * rows])
        if start == values.shape[0]:
            # Empty per-request lists: the values as they are, each row's list empty.
            return KeyedJaggedTensor(
                keys=self.group_keys, values=values, weights=weights,
                lengths=torch.cat([lengths[:n_rows * rows],
                                   torch.zeros([n_pr * rows], dtype=lengths.dtype,
                                               device=lengths.device)]))
        parts_v: List[Tensor] = [values[:start]]  # noqa: UP006
        parts_n: List[Tensor] = [lengths[:n_rows * rows]]  # noqa: UP006
        parts_w: List[Tensor] = []  # noqa: UP006
        if weights is not None:
            parts_w.append(weights[:start])
        for j in range(n_pr):
            a = offsets[n_rows * rows + j]
            b = offsets[n_rows * rows + j + 1]
            parts_v.append(values[a:b].repeat(rows))
            parts_n.append(lengths[n_rows * rows + j:n_rows * rows + j + 1].repeat(rows))
            if weights is not None:
                parts_w.append(weights[a:b].repeat(rows))
        kjt_weights: Tensor | None = None
        if weights is not None:
            kjt_weights = torch.cat(parts_w)
        return KeyedJaggedTensor(keys=self.group_keys, values=torch.cat(parts_v),
                                 lengths=torch.cat(parts_n), weights=kjt_weights)

    def kjt(self, f: Dict[str, Tensor], rows: int) -> KeyedJaggedTensor:  # noqa: UP006
        if self.ids_group != "" and (self.ids_group + ".offsets") in f:
            return self.grouped_kjt(f, rows)
        values: List[Tensor] = []  # noqa: UP006
        lengths: List[Tensor] = []  # noqa: UP006
        weights: List[Tensor] = []  # noqa: UP006
        for i in range(len(self.keys)):
            name = self.features[i]
            v = f[name + ".values"].to(torch.int64)
            o = f[name + ".offsets"]
            n = o[1:] - o[:-1]
            w = torch.ones_like(v, dtype=torch.float32)
            if self.weight_of[i] >= 0:
                w = f[self.weight_names[self.weight_of[i]] + ".values"].to(torch.float32)
                if w.shape[0] != v.shape[0]:
                    raise RuntimeError("a weight feature holds " + str(w.shape[0])
                                       + " values for the " + str(v.shape[0])
                                       + " ids of " + name)
            if self.per_request[i]:
                v = v.repeat(rows)
                w = w.repeat(rows)
                n = n.repeat(rows)
            values.append(v)
            lengths.append(n)
            weights.append(w)
        kjt_weights: Tensor | None = None
        if self.weighted:
            kjt_weights = joined(weights, 0)
        return KeyedJaggedTensor(keys=self.keys, values=joined(values, 0),
                                 lengths=joined(lengths, 0), weights=kjt_weights)

    def dense_tensor(self, f: Dict[str, Tensor]) -> Tensor:  # noqa: UP006
        if self.dense_group != "" and self.dense_group in f:
            return f[self.dense_group]    # [rows, D] float32, as the message holds it
        cols: List[Tensor] = []  # noqa: UP006
        for name in self.dense:
            t = f[name]
            if t.dim() == 1:
                t = t.unsqueeze(1)
            cols.append(t.to(torch.float32))
        return joined(cols, 1)


class DenseKJTCall(KJTInputs):
    """``model(dense, kjt)``, as torchrec.models.dlrm.DLRM.forward."""

    def forward(self, f: Dict[str, Tensor]) -> Tensor:  # noqa: UP006
        dense = self.dense_tensor(f)
        return self.model(dense, self.kjt(f, dense.shape[0]))


class KJTCall(KJTInputs):
    """``model(kjt)``: a model without dense inputs."""

    def forward(self, f: Dict[str, Tensor]) -> Tensor:  # noqa: UP006
        return self.model(self.kjt(f, self.rows(f)))


CALLS = {"dense_kjt": DenseKJTCall, "kjt": KJTCall}
