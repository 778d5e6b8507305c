"""The module a TorchRec model is served as: the features dict in, the
model's own call (dense tensor, KeyedJaggedTensor) inside.

Built by `signatures.derive.torchrec_model` from the input spec and the keys
the model's tables read, and scripted with the model (traced by
``torchrec.fx`` as TorchRec's inference path does). Imports torchrec: load
it only through `torchrec_model`, after `torchrec_runtime.require`.

The KeyedJaggedTensor is built inside the artifact, on the leaf's device: a
key's values and per-row lengths (offset differences) come straight from its
ragged column, a per-request (user) list is repeated for every row there,
and the keys' values are concatenated in key order. The dense tensor is the
spec's dense columns side by side, as float32. One key's values, or one
dense float32 matrix, is used as it is: no copy.
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

    def rows(self, f: Dict[str, Tensor]) -> int:  # noqa: UP006
        return f[self.features[self.rows_index] + ".offsets"].shape[0] - 1

    def kjt(self, f: Dict[str, Tensor], rows: int) -> KeyedJaggedTensor:  # noqa: UP006
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
