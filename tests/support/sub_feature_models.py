"""Models that read less than whole features (issue 29), in a real file:
TorchScript reads a module's source, torch.export names its lines. Their
reads are written by hand into module_info.json (`SUB_FEATURE_READS`): the
derivation of reads from graphs is signatures/derive's."""
import torch
from torch import Tensor


class Matryoshka(torch.nn.Module):
    """Reads the first 64 of a 256-dim embedding."""

    def __init__(self):
        super().__init__()
        with torch.random.fork_rng():
            torch.manual_seed(1)
            self.w = torch.nn.Parameter(torch.randn(64), requires_grad=False)

    def forward(self, features: dict[str, Tensor]) -> Tensor:
        return (features["emb"][:, :64] * self.w).sum(1) + features["ctr"]


class Bf16Ranker(torch.nn.Module):
    """Casts its float32 inputs to bfloat16 on entry; reads a slice of the user's vector."""

    def __init__(self):
        super().__init__()
        with torch.random.fork_rng():
            torch.manual_seed(2)
            self.w = torch.nn.Parameter(torch.randn(12).to(torch.bfloat16), requires_grad=False)

    def forward(self, features: dict[str, Tensor]) -> Tensor:
        x = features["dense"].to(torch.bfloat16)
        u = features["u"][:, 2:5].to(torch.bfloat16)
        return (x * self.w).sum(1).float() + u.sum(1).float()


class HalfRanker(torch.nn.Module):
    """Reads six of ten float64 positions as float16."""

    def forward(self, features: dict[str, Tensor]) -> Tensor:
        x = features["wide"][:, [1, 2, 5, 6, 7, 8]].half()
        return (x * x).sum(1).float() + x[:, 0].float()


SUB_FEATURE_READS = {
    "Matryoshka": {"emb": {"ranges": [[0, 64]]}},
    "Bf16Ranker": {"dense": {"dtype": "bfloat16"}, "u": {"ranges": [[2, 5]], "dtype": "bfloat16"}},
    "HalfRanker": {"wide": {"ranges": [[1, 3], [5, 9]], "dtype": "float16"}},
}
