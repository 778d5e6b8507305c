"""A bundle carries each model version's reads (issue 29) to the root: in
its JSON and its id, for the report and the diff; a bundle without reads
is what it was (same keys, same id), and one with reads still lists every
feature a version reads, so a root that predates reads sends them whole."""
import dataclasses
import os

from _trim.reads import FeatureRead
from rootproc.rollout.installed import ActiveConfig
from signatures.bundle import Bundle, build
from signatures.derive.exporter import export
from signatures.repository.module_info import ModelRepository, ModuleInfo
from signatures.savings import diff, format_diff, format_table, report

SRC = "tests.signatures.models:"
PLACEMENT = {"leaves": {"leaf-1": {"current": ["emb@1"], "pending": []}}}


def with_read(root, read: FeatureRead | None):
    version_dir = os.path.join(root, "emb", "1")
    info = ModuleInfo.load(version_dir)
    inputs = [dataclasses.replace(s, read=read) if s.name == "pin_emb" else s for s in info.inputs]
    dataclasses.replace(info, inputs=inputs, signature_hash="").write(version_dir)
    return ModelRepository(root)


def test_reads_travel_in_the_bundle_and_its_id(tmp_path, schema):
    root = tmp_path / "repo"
    export(SRC + "Helpers", root, "emb", schema, version="1")
    plain = build(ModelRepository(root), schema, PLACEMENT)
    assert "reads" not in plain.to_dict()["models"]["emb@1"]
    read = FeatureRead(((0, 4),), "bfloat16")
    fine = build(with_read(root, read), schema, PLACEMENT)
    entry = fine.to_dict()["models"]["emb@1"]
    assert entry["reads"] == {"pin_emb": {"ranges": [[0, 4]], "dtype": "bfloat16"}}
    assert "pin_emb" in entry["features"]          # an older root sends it whole
    assert fine.id != plain.id
    fine.save(tmp_path / "b.json")
    back = Bundle.load(tmp_path / "b.json")
    assert back.models["emb@1"].read_map() == {"pin_emb": read} and back.id == fine.id
    active = ActiveConfig.from_bundle(back)
    assert active.reads_for("emb@1") == {"pin_emb": read}
    assert active.features_for("emb@1") == plain.models["emb@1"].features
    # An older root reads only `features`: what it sends is the plain bundle's.
    assert ActiveConfig.from_bundle(plain).reads_for("emb@1") == {}


def test_bad_reads_in_a_bundle_are_named(tmp_path, schema):
    root = tmp_path / "repo"
    export(SRC + "Helpers", root, "emb", schema, version="1")
    d = build(ModelRepository(root), schema, PLACEMENT).to_dict()
    d["models"]["emb@1"]["reads"] = {"pin_unknown": {"dtype": "float16"},
                                     "pin_emb": {"dtype": "int8"}}
    try:
        Bundle.from_dict(d)
    except ValueError as exc:
        assert "pin_unknown" in str(exc)
    else:
        raise AssertionError("accepted")


def test_report_and_diff_count_sub_feature_savings_apart(tmp_path, schema):
    root = tmp_path / "repo"
    export(SRC + "Helpers", root, "emb", schema, version="1")
    plain = build(ModelRepository(root), schema, PLACEMENT)
    fine = build(with_read(root, FeatureRead(((0, 4),), "bfloat16")), schema, PLACEMENT)
    rows = {r.name: r for r in report(fine, schema, rows=64)}
    row = rows["emb@1"]
    plain_row = {r.name: r for r in report(plain, schema, rows=64)}["emb@1"]
    assert row.trimmed == plain_row.trimmed and plain_row.reads is None
    # pin_emb: 8 float32 a row whole, 4 bfloat16 read: 24 bytes a row fewer, 8 of ranges more.
    assert row.sub_feature_saved == 64 * 24 - 8
    assert "sub-feat" in format_table(list(rows.values()), 64)
    d = {x.key: x for x in diff(plain, fine, schema, rows=64)}
    assert d["model:emb@1"].status == "changed"
    assert d["model:emb@1"].reads_changed == ("pin_emb",)
    assert d["model:emb@1"].bytes_delta == 0
    assert d["model:emb@1"].sub_feature_delta == 64 * 24 - 8
    assert "~ pin_emb (read)" in format_diff(list(d.values()), plain, fine, 64)
