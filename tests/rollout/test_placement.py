"""Which versions a following leaf serves (leafproc.follower.versions_for)."""
from leafproc.follower import versions_for
from signatures.bundle import BundleLeaf


class FakeBundle:
    def __init__(self, leaves):
        self.leaves = {n: BundleLeaf(n, tuple(c), tuple(p), ()) for n, (c, p) in leaves.items()}


BUNDLE = FakeBundle({"leaf-0": (["ctr@3"], ["ctr@4"]), "leaf-1": (["div@2"], [])})


def test_placed_versions_on_the_stage_only():
    assert versions_for("leaf-0", BUNDLE, ["ctr@3", "div@2"]) == ["ctr@3"]
    assert versions_for("leaf-0", BUNDLE, ["ctr@3", "ctr@4", "div@2"]) == ["ctr@3", "ctr@4"]
    assert versions_for("leaf-1", BUNDLE, ["ctr@3", "ctr@4", "div@2"]) == ["div@2"]


def test_unplaced_version_goes_to_leaves_hosting_its_model():
    stage = ["ctr@3", "ctr@9", "div@2", "new@1"]
    assert versions_for("leaf-0", BUNDLE, stage) == ["ctr@3", "ctr@9"]
    assert versions_for("leaf-1", BUNDLE, stage) == ["div@2"]


def test_unnamed_leaf_or_no_bundle_serves_the_whole_stage():
    stage = ["ctr@3", "div@2"]
    assert versions_for("leaf-7", BUNDLE, stage) == stage
    assert versions_for("leaf-0", None, stage) == stage
