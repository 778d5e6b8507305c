import pytest
import torch

from signatures.derive.script_graph import DerivationError, check_explicit, derive, feature_name

from . import models


def keys(cls):
    return sorted(derive(torch.jit.script(cls())).features())


@pytest.mark.parametrize("cls, expected", [
    (models.Direct, ["pin_age_days", "pin_ctr_7d"]),
    (models.WithGet, ["pin_ctr_7d", "pin_quality"]),
    (models.WithIn, ["pin_age_days", "pin_ctr_7d"]),
    (models.Helpers, ["pin_emb", "pin_quality", "user_emb"]),
    (models.Submodules, ["pin_emb", "user_pin_affinity"]),
    (models.ConstantLoop, ["pin_age_days", "pin_ctr_7d", "pin_quality"]),
    (models.AttributeLoop, ["pin_age_days", "pin_ctr_7d", "pin_lang", "pin_quality"]),
    (models.Branchy, ["pin_age_days", "pin_ctr_7d"]),
    (models.Ragged, ["pin_tags", "user_emb", "user_recent_pins"]),
    (models.Concatenated, ["pin_quality"]),
    # a branch choosing the key: both constants; a written key read back still counts
    (models.Chooser, ["pin_age_days", "pin_ctr_7d", "pin_lang", "pin_quality", "scratch"]),
])
def test_styles(cls, expected):
    assert keys(cls) == expected


def test_ragged_parts_map_to_feature():
    d = derive(torch.jit.script(models.Ragged()))
    assert d.features()["pin_tags"] == ["pin_tags.offsets", "pin_tags.values"]
    assert feature_name("x.values") == "x" and feature_name(".values") == ".values"


def test_places_name_source_lines():
    d = derive(torch.jit.script(models.Branchy()))
    (place,) = d.keys["pin_age_days"]
    assert "models.py" in place and 'features["pin_age_days"]' in place


def test_survives_save_and_load(tmp_path):
    torch.jit.script(models.Helpers()).save(str(tmp_path / "m.pt"))
    loaded = torch.jit.load(str(tmp_path / "m.pt"))
    assert sorted(derive(loaded).features()) == ["pin_emb", "pin_quality", "user_emb"]


def test_computed_keys_are_dynamic_with_place():
    d = derive(torch.jit.script(models.ComputedKey()))
    assert not d.complete
    assert any("models.py" in p and 'features["pin_" + str(n)]' in p for p in d.dynamic)
    d = derive(torch.jit.script(models.Computed()))
    assert any("aten::keys" in p for p in d.dynamic)


def test_bad_forward_signature():
    with pytest.raises(DerivationError, match="features: Dict"):
        derive(torch.jit.script(models.BadSignature()))


def test_explicit_list_checked():
    d = derive(torch.jit.script(models.ComputedKey()))
    assert check_explicit(d, ["pin_lang", "pin_quality"]) == []
    (problem,) = check_explicit(d, ["pin_quality"])
    assert "reads 'pin_lang'" in problem and "lacks it" in problem
    d = derive(torch.jit.script(models.Direct()))
    (problem,) = check_explicit(d, ["pin_ctr_7d", "pin_age_days", "pin_quality"])
    assert "'pin_quality' is in the explicit feature list but the graph never reads it" in problem


def test_list_attribute_mutated_in_forward_is_dynamic():
    d = derive(torch.jit.script(models.MutatedAttributeLoop()))
    assert not d.complete and any("features[name]" in p for p in d.dynamic)


def test_str_attribute_keys_of_modules_and_submodules():
    # Tower("user_emb") reading features[self.key]: resolved like a list attribute
    assert keys(models.StrAttributeTowers) == ["pin_emb", "pin_quality", "user_emb"]
    d = derive(torch.jit.script(models.StrAttributeTowers()))
    assert d.complete and any("features[self.key]" in p for p in d.keys["user_emb"])


@pytest.mark.parametrize("cls", [models.ReassignedStrAttribute, models.ReassignedListAttribute])
def test_attribute_the_graph_writes_is_dynamic(cls):
    d = derive(torch.jit.script(cls()))
    assert not d.complete and "pin_quality" not in d.keys
    assert any("models.py" in p for p in d.dynamic)
