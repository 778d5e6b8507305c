"""The demo's model: a cheap scorer over a named subset of features.

The names are list attributes that forward never mutates, so the TorchScript
derivation reads them off the graph like any constant key; torch.export
traces the loops away and names the features the graph reads. Either way
the signature is the same, whichever format serves it.
"""
from __future__ import annotations

import torch


class SubsetScorer(torch.nn.Module):
    def __init__(self, dense: list[str], ragged: list[str], seed: int):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.dense_weights: torch.Tensor
        self.ragged_weights: torch.Tensor
        self.dense_names: list[str] = list(dense)
        self.ragged_names: list[str] = list(ragged)
        self.register_buffer("dense_weights",
                             torch.randn(len(dense), generator=g) / max(1, len(dense)) ** 0.5)
        self.register_buffer("ragged_weights",
                             torch.randn(len(ragged), generator=g) / max(1, len(ragged)) ** 0.5)

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        first = features[self.dense_names[0]]
        score = torch.zeros(first.shape[0], device=first.device)  # on the leaf's device
        i = 0
        for name in self.dense_names:
            x = features[name].float()
            if x.dim() > 1:
                x = x.mean(dim=1)
            score = score + self.dense_weights[i] * x
            i += 1
        j = 0
        for name in self.ragged_names:
            offsets = features[name + ".offsets"]
            counts = (offsets[1:] - offsets[:-1]).float()
            score = score + self.ragged_weights[j] * torch.log1p(counts)
            j += 1
        return torch.sigmoid(score)
