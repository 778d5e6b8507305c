"""Two example models for the README tour. Each reads a different subset of
examples/schema.json; `trimmer export` derives which from the code."""

import torch


class CtrModel(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(16, 1)

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        x = self.proj(features["pin_emb"]).squeeze(1)
        x = x + features["pin_ctr_7d"] + 0.1 * features["user_pin_affinity"]
        if "pin_quality" in features:
            x = x * features["pin_quality"]
        return torch.sigmoid(x)


class EngageModel(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.image = torch.nn.Linear(64, 1)

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        offsets = features["pin_topics.offsets"]
        topics = (offsets[1:] - offsets[:-1]).float()
        x = self.image(features["pin_image_vec"]).squeeze(1) + torch.log1p(topics)
        return torch.sigmoid(x + features["pin_saves_30d"] - features["user_age_days"] / 3650)


def ctr():
    return CtrModel()


def engage():
    return EngageModel()
