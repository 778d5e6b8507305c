"""Models that read less than whole features, for the demo and tests.

- `MatryoshkaScorer`: reads the first ``prefix`` dims (default 64) of each
  of its embeddings, as a Matryoshka-style model does: ``x[:, :64]``.
- `Bf16Scorer`: a bf16 ranker that casts each of its features to bfloat16
  on entry, ``x.to(torch.bfloat16)``, and never reads the float32 value.

Both take their feature names as list attributes forward never mutates, so
the TorchScript derivation resolves them like any constant key, and their
reads are derived from either graph (signatures/derive/feature_reads.py):
``{"ranges": [[0, 64]]}`` and ``{"dtype": "bfloat16"}`` in module_info.json.

No ``from __future__ import annotations``: TorchScript reads the class-level
annotations as types.
"""

import torch


class MatryoshkaScorer(torch.nn.Module):
    """Scores rows by the ``prefix``-dim head of each embedding (all at least that wide)."""

    names: list[str]
    weights: torch.Tensor

    def __init__(self, embeddings: list[str], prefix: int = 64, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.names = list(embeddings)
        self.prefix = prefix
        self.register_buffer("weights", torch.randn(len(embeddings), prefix, generator=g)
                             / prefix ** 0.5)

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        first = features[self.names[0]]
        score = torch.zeros(first.shape[0], device=first.device)
        i = 0
        for name in self.names:
            head = features[name][:, : self.prefix]
            score = score + head @ self.weights[i]
            i += 1
        return torch.sigmoid(score)


class Bf16Scorer(torch.nn.Module):
    """Scores rows in bfloat16 from float32 features (scalars and vectors)."""

    names: list[str]
    weights: torch.Tensor

    def __init__(self, dense: list[str], seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.names = list(dense)
        self.register_buffer("weights", (torch.randn(len(dense), generator=g)
                                         / max(1, len(dense)) ** 0.5).to(torch.bfloat16))

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        first = features[self.names[0]]
        score = torch.zeros(first.shape[0], device=first.device, dtype=torch.bfloat16)
        i = 0
        for name in self.names:
            x = features[name].to(torch.bfloat16)
            if x.dim() > 1:
                x = x.mean(dim=1)
            score = score + self.weights[i] * x
            i += 1
        return torch.sigmoid(score.float())


__all__ = ["Bf16Scorer", "MatryoshkaScorer"]
