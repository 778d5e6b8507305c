"""Tiny TorchScript models in many styles, for derivation and export tests.

They live in a real file because TorchScript reads a module's source.
"""


import torch
from torch import Tensor


class Direct(torch.nn.Module):
    def forward(self, features: dict[str, Tensor]) -> Tensor:
        return features["pin_ctr_7d"] * 2 + features["pin_age_days"]


class WithGet(torch.nn.Module):
    def forward(self, features: dict[str, Tensor]) -> Tensor:
        x = features.get("pin_quality")
        if x is None:
            return torch.zeros(1)
        return x + features.get("pin_ctr_7d", torch.zeros(1))


class WithIn(torch.nn.Module):
    def forward(self, features: dict[str, Tensor]) -> Tensor:
        s = features["pin_ctr_7d"]
        if "pin_age_days" in features:
            s = s + features["pin_age_days"]
        return s


class Helpers(torch.nn.Module):
    def emb_score(self, f: dict[str, Tensor]) -> Tensor:
        return (f["pin_emb"] * f["user_emb"]).sum(1)

    def forward(self, features: dict[str, Tensor]) -> Tensor:
        return self.emb_score(features) + features["pin_quality"]


class Tower(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(8, 1)

    def forward(self, features: dict[str, Tensor]) -> Tensor:
        return self.lin(features["pin_emb"]).squeeze(1)


class Submodules(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.tower = Tower()

    def forward(self, features: dict[str, Tensor]) -> Tensor:
        return self.tower(features) + features["user_pin_affinity"]


class ConstantLoop(torch.nn.Module):
    def forward(self, features: dict[str, Tensor]) -> Tensor:
        s = features["pin_ctr_7d"]
        for name in ["pin_age_days", "pin_quality"]:
            s = s + features[name]
        return s


class AttributeLoop(torch.nn.Module):
    __constants__ = ["const_names"]
    names: list[str]

    def __init__(self):
        super().__init__()
        self.names = ["pin_ctr_7d", "pin_quality"]
        self.const_names = ["pin_age_days"]

    def forward(self, features: dict[str, Tensor]) -> Tensor:
        s = torch.zeros(features["pin_lang"].shape[0])
        for name in self.names:
            s = s + features[name]
        for name in self.const_names:
            s = s + features[name]
        return s


class Branchy(torch.nn.Module):
    def forward(self, features: dict[str, Tensor]) -> Tensor:
        s = features["pin_ctr_7d"]
        if bool((s > 100).any()):
            s = s + features["pin_age_days"]  # only on some data: still required
        return s


class Ragged(torch.nn.Module):
    def forward(self, features: dict[str, Tensor]) -> Tensor:
        values = features["pin_tags.values"].to(torch.float32)
        offsets = features["pin_tags.offsets"]
        lengths = (offsets[1:] - offsets[:-1]).to(torch.float32)
        user = features["user_recent_pins.values"].to(torch.float32).sum()
        return lengths + values.sum() * 0 + user * 0 + features["user_emb"][:, 0]


class Concatenated(torch.nn.Module):
    def forward(self, features: dict[str, Tensor]) -> Tensor:
        prefix = "pin_"
        return features[prefix + "quality"]


class Computed(torch.nn.Module):
    def forward(self, features: dict[str, Tensor]) -> Tensor:
        s = features["pin_ctr_7d"]
        for k in features.keys():
            if k.startswith("pin_a"):
                s = s + features[k]
        return s


class ComputedKey(torch.nn.Module):
    def forward(self, features: dict[str, Tensor]) -> Tensor:
        n = int(features["pin_lang"][0].item())
        return features["pin_" + str(n)]


class WrongRows(torch.nn.Module):
    def forward(self, features: dict[str, Tensor]) -> Tensor:
        return features["pin_ctr_7d"].sum().reshape(1)


class Raises(torch.nn.Module):
    def forward(self, features: dict[str, Tensor]) -> Tensor:
        if bool((features["pin_ctr_7d"] >= 0).all()):
            raise RuntimeError("model refuses this batch")
        return features["pin_ctr_7d"]


class DirectPlus(torch.nn.Module):
    """Direct with one more feature: a different signature."""

    def forward(self, features: dict[str, Tensor]) -> Tensor:
        return features["pin_ctr_7d"] * 2 + features["pin_age_days"] + features["pin_quality"]


class BadSignature(torch.nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x


def make_direct() -> torch.nn.Module:
    return Direct()


def make_direct_scripted():
    return torch.jit.script(Direct())


class Chooser(torch.nn.Module):
    def forward(self, features: dict[str, Tensor]) -> Tensor:
        key = "pin_ctr_7d"
        if bool((features["pin_lang"] > 3).any()):
            key = "pin_quality"
        features["scratch"] = features[key] * 2
        return features["scratch"] + features.pop("pin_age_days")


class MutatedAttributeLoop(torch.nn.Module):
    names: list[str]

    def __init__(self):
        super().__init__()
        self.names = ["pin_ctr_7d"]

    def forward(self, features: dict[str, Tensor]) -> Tensor:
        if bool((features["pin_lang"] > 3).any()):
            self.names.append("pin_quality")
        s = torch.zeros(features["pin_lang"].shape[0])
        for name in self.names:
            s = s + features[name]
        return s


class KeyTower(torch.nn.Module):
    """A tower told which feature it reads: the key is a plain str attribute."""

    def __init__(self, key: str):
        super().__init__()
        self.key = key
        self.lin = torch.nn.Linear(8, 1)

    def forward(self, features: dict[str, Tensor]) -> Tensor:
        return self.lin(features[self.key]).squeeze(1)


class StrAttributeTowers(torch.nn.Module):
    """Towers in a ModuleList, each with its own key, and a key attribute of the model itself."""

    def __init__(self):
        super().__init__()
        self.towers = torch.nn.ModuleList([KeyTower("user_emb"), KeyTower("pin_emb")])
        self.bias_key = "pin_quality"

    def forward(self, features: dict[str, Tensor]) -> Tensor:
        s = features[self.bias_key]
        for tower in self.towers:
            s = s + tower(features)
        return s


class ReassignedStrAttribute(torch.nn.Module):
    """forward rewrites its key attribute: the next call reads another feature."""

    def __init__(self):
        super().__init__()
        self.key = "pin_ctr_7d"

    def forward(self, features: dict[str, Tensor]) -> Tensor:
        s = features[self.key]
        self.key = "pin_quality"
        return s


class ReassignedListAttribute(torch.nn.Module):
    """forward replaces its list attribute (no append): the next call reads other features."""

    names: list[str]

    def __init__(self):
        super().__init__()
        self.names = ["pin_ctr_7d"]

    def forward(self, features: dict[str, Tensor]) -> Tensor:
        s = torch.zeros(features["pin_lang"].shape[0])
        for name in self.names:
            s = s + features[name]
        self.names = ["pin_quality"]
        return s


class RaggedByName(torch.nn.Module):
    """Reads the ragged pin_tags by its name instead of .values/.offsets."""

    def forward(self, features: dict[str, Tensor]) -> Tensor:
        return features["pin_ctr_7d"] + features["pin_tags"].sum()


class KeyDependent(torch.nn.Module):
    """Which features it reads depends on a key it never reads."""

    def forward(self, features: dict[str, Tensor]) -> Tensor:
        if "pin_quality" in features:
            return features["pin_ctr_7d"]
        return features["pin_age_days"]


class WritesInput(torch.nn.Module):
    """Scales a feature in place, through a view of it: the leaf may hand
    it read-only shared memory."""

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        ctr = features["pin_ctr_7d"]
        ctr[:].mul_(2.0)
        return ctr + features["pin_age_days"]


class SeededTower(torch.nn.Module):
    """Tower with weights that are the same in every process (a trained model
    loaded from a checkpoint, as far as export can tell)."""

    def __init__(self):
        super().__init__()
        gen = torch.Generator().manual_seed(7)
        self.lin = torch.nn.Linear(8, 1)
        with torch.no_grad():
            self.lin.weight.copy_(torch.randn(1, 8, generator=gen))
            self.lin.bias.fill_(0.5)

    def forward(self, features: dict[str, Tensor]) -> Tensor:
        return self.lin(features["pin_emb"]).squeeze(1)


class SeededTowerB(SeededTower):
    """SeededTower with other weights: another model version."""

    def __init__(self):
        super().__init__()
        with torch.no_grad():
            self.lin.bias.fill_(-0.5)
