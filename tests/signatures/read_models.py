"""Models that read part of a feature, or must be read whole (tests/signatures/test_derive_reads.py).

``emb`` is float32 [256], ``vec`` float32 [16], ``score`` float32 [],
``pos`` int64 [3]; every model returns one float score per row.
"""

import warnings

import torch
from torch import Tensor


def first64(t: Tensor) -> Tensor:
    return t[:, :64]


class Prefix(torch.nn.Module):
    def forward(self, features: dict[str, Tensor]) -> Tensor:
        return features["emb"][:, :64].sum(1)


class Narrow(torch.nn.Module):
    def forward(self, features: dict[str, Tensor]) -> Tensor:
        return features["emb"].narrow(1, 8, 16).sum(1)


class IndexList(torch.nn.Module):
    def forward(self, features: dict[str, Tensor]) -> Tensor:
        return (features["emb"][:, [7, 0, 3]] * torch.tensor([1.0, 2.0, 3.0])).sum(1)


class IndexSelect(torch.nn.Module):
    def forward(self, features: dict[str, Tensor]) -> Tensor:
        return torch.index_select(features["emb"], 1, torch.tensor([200, 3, 7])).prod(1)


class BufferIndex(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.idx: Tensor
        self.register_buffer("idx", torch.tensor([250, 251, 9]))

    def forward(self, features: dict[str, Tensor]) -> Tensor:
        x = features["emb"]
        return x[:, self.idx].sum(1) - x.index_select(1, self.idx).amax(1)


class Select(torch.nn.Module):
    def forward(self, features: dict[str, Tensor]) -> Tensor:
        return features["emb"][:, 5] * features["emb"][:, -1]


class Step(torch.nn.Module):
    def forward(self, features: dict[str, Tensor]) -> Tensor:
        return features["emb"][:, 0:10:2].sum(1)


class Union(torch.nn.Module):
    def forward(self, features: dict[str, Tensor]) -> Tensor:
        x = features["emb"]
        return x[:, :8].sum(1) + x[..., 100:110].mean(-1) + x[:, :128][:, 120:].amax(1)


class CastBf16(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Linear(256, 1).to(torch.bfloat16)

    def forward(self, features: dict[str, Tensor]) -> Tensor:
        return self.w(features["emb"].to(torch.bfloat16)).float().squeeze(1)


class CastHalf(torch.nn.Module):
    def forward(self, features: dict[str, Tensor]) -> Tensor:
        return features["emb"].half().float().sum(1) + features["vec"].half().float().amax(1)


class SliceThenCast(torch.nn.Module):
    def forward(self, features: dict[str, Tensor]) -> Tensor:
        return features["emb"][:, :64].to(torch.bfloat16).float().sum(1)


class CastThenSlice(torch.nn.Module):
    def forward(self, features: dict[str, Tensor]) -> Tensor:
        return features["emb"].half()[:, 64:128].float().sum(1)


class AttributeBound(torch.nn.Module):
    def __init__(self, dim: int = 32):
        super().__init__()
        self.dim = dim

    def forward(self, features: dict[str, Tensor]) -> Tensor:
        return features["emb"][:, : self.dim].sum(1) + features["score"]


class Head(torch.nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x[:, :64].sum(1)


class ViaHelper(torch.nn.Module):
    """A helper function and a submodule slice: inlined, so derivable."""

    def __init__(self):
        super().__init__()
        self.head = Head()

    def forward(self, features: dict[str, Tensor]) -> Tensor:
        return first64(features["emb"]).sum(1) + self.head(features["vec"][:, :4].to(
            torch.bfloat16).float().repeat(1, 16))


# -- read whole -----------------------------------------------------------------

class SliceAndWhole(torch.nn.Module):
    def forward(self, features: dict[str, Tensor]) -> Tensor:
        x = features["emb"]
        return x[:, :64].sum(1) + x.sum(1)


class SliceInBranch(torch.nn.Module):
    """TorchScript: one branch hands on the whole feature."""

    def forward(self, features: dict[str, Tensor]) -> Tensor:
        x = features["emb"]
        if bool(features["score"].sum() > 0):
            y = x[:, :64]
        else:
            y = x
        return y.sum(1)


class SliceInCond(torch.nn.Module):
    """torch.export: the feature goes into torch.cond, whose branches are not followed."""

    def forward(self, features: dict[str, Tensor]) -> Tensor:
        return torch.cond(features["score"].sum() > 0, lambda t: t[:, :64].sum(1),
                          lambda t: t[:, :32].sum(1), (features["emb"],))


class CastAndWide(torch.nn.Module):
    def forward(self, features: dict[str, Tensor]) -> Tensor:
        x = features["emb"]
        v = features["vec"][:, :8]
        return x.to(torch.bfloat16).float().sum(1) + x[:, 0] + \
            v.half().float().sum(1) * v[:, 0]


class RowSlice(torch.nn.Module):
    def forward(self, features: dict[str, Tensor]) -> Tensor:
        x = features["emb"]
        return x[:, :64].sum(1) + x[:1, :64].sum()


class Reshaped(torch.nn.Module):
    def forward(self, features: dict[str, Tensor]) -> Tensor:
        x = features["emb"]
        return x.reshape(-1, 4, 64)[:, 0].sum(1) + features["vec"].view(-1, 2, 8)[:, 0, 0]


class DataIndex(torch.nn.Module):
    def forward(self, features: dict[str, Tensor]) -> Tensor:
        x = features["emb"]
        return x.index_select(1, features["pos"][0]).sum(1) + \
            features["vec"][:, features["pos"][0]].sum(1)


class ShapeBound(torch.nn.Module):
    """A bound computed from the shape: whole in TorchScript; torch.export
    specialises the shape, so there it is the constant 64."""

    def forward(self, features: dict[str, Tensor]) -> Tensor:
        x = features["emb"]
        return x[:, : x.shape[1] // 4].sum(1)


with warnings.catch_warnings():   # torch 2.x deprecates TorchScript
    warnings.simplefilter("ignore", DeprecationWarning)

    @torch.jit.interface
    class HeadInterface(torch.nn.Module):
        def forward(self, x: Tensor) -> Tensor:
            pass


class OpaqueSubmodule(torch.nn.Module):
    """TorchScript: a submodule called through an interface is not inlined."""

    head: HeadInterface

    def __init__(self):
        super().__init__()
        self.head = Head()

    def forward(self, features: dict[str, Tensor]) -> Tensor:
        return self.head.forward(features["emb"])


class CopiesThenCast(torch.nn.Module):
    """Copies and moves keep the values: the cast after them still narrows."""

    def forward(self, features: dict[str, Tensor]) -> Tensor:
        x = features["emb"]
        head = x[:, :16].clone().to(x.device).to(torch.float16)
        return head.float().sum(1) + x.detach()[:, 16:32].to(torch.float16).float().amax(1)


class RandomParts(torch.nn.Module):
    """A slice ``x[:, start:end:step]`` and an index list, all attributes
    (constants to the derivation), of a feature of any width."""

    def __init__(self, start: int, end: int, step: int, idx: list[int]):
        super().__init__()
        self.start, self.end, self.step = start, end, step
        self.idx: Tensor
        self.register_buffer("idx", torch.tensor(idx, dtype=torch.int64))

    def forward(self, features: dict[str, Tensor]) -> Tensor:
        x = features["emb"]
        return x[:, self.start:self.end:self.step].sum(1) + 2 * x[:, self.idx].sum(1)


class RandomPartsBf16(RandomParts):
    def forward(self, features: dict[str, Tensor]) -> Tensor:
        x = features["emb"].to(torch.bfloat16)
        return (x[:, self.start:self.end:self.step].sum(1) + 2 * x[:, self.idx].sum(1)).float()


class RandomPartsHalf(RandomParts):
    def forward(self, features: dict[str, Tensor]) -> Tensor:
        x = features["emb"]
        return x[:, self.start:self.end:self.step].half().float().sum(1) + \
            x[:, self.idx].half().float().prod(1)


class LoopOfWidths(torch.nn.Module):
    """One read site for two features of different widths: each read at its own."""

    names: list[str]

    def __init__(self):
        super().__init__()
        self.names = ["emb", "vec"]

    def forward(self, features: dict[str, Tensor]) -> Tensor:
        score = features["score"]
        for name in self.names:
            score = score + features[name][:, -8:].sum(1)
        return score
