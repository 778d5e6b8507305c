"""One model in the style production rankers are written, exported in every
format (TorchScript, torch.export program, AOTInductor package) by
`tests.support.formats`. It lives in a real file because TorchScript reads a
module's source, and torch.export names its source lines."""
import torch
import torch.nn.functional as F
from torch import Tensor


class FormatRanker(torch.nn.Module):
    """Over the root tests' schema (tests/root/world.py): candidate scalars, a
    vector and a hashed id, a per-request vector and scalar, a per-row and a
    per-request list (bags of embeddings), and a cross feature."""

    def __init__(self, seed: int = 0):
        super().__init__()
        with torch.random.fork_rng():   # the same weights in every process: exports are retried
            torch.manual_seed(seed)
            self.pin = torch.nn.Linear(8 + 3 + 4, 8)
            self.user = torch.nn.Linear(8 + 1, 8)
            self.cat = torch.nn.Embedding(64, 4)
            self.topics = torch.nn.Parameter(torch.randn(512, 8) * 0.1, requires_grad=False)
            self.pins = torch.nn.Parameter(torch.randn(1000, 8) * 0.1, requires_grad=False)
        self.scalar_names = ["pin_ctr_7d", "pin_quality", "user_pin_affinity"]

    def forward(self, features: dict[str, Tensor]) -> Tensor:
        scalars = torch.stack([features[n] for n in self.scalar_names], 1)
        pin = torch.cat([features["pin_emb"], scalars, self.cat(features["pin_cat"])], 1)
        p = torch.tanh(self.pin(pin))
        topics = F.embedding_bag(features["pin_topics.values"], self.topics,
                                 features["pin_topics.offsets"], mode="sum",
                                 include_last_offset=True)
        recent = F.embedding_bag(features["user_recent_pins.values"], self.pins,
                                 features["user_recent_pins.offsets"], mode="mean",
                                 include_last_offset=True)
        user = torch.cat([features["user_emb"], features["user_age"].unsqueeze(1) / 100.0], 1)
        u = torch.tanh(self.user(user)) + recent
        return torch.sigmoid((p * (u + topics)).sum(1))
