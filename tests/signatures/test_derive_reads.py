"""What a model reads of each feature, derived from its TorchScript and its
torch.export graph (signatures/derive/feature_reads.py), and written by
`trimmer export` into module_info.json.

Every derived read is checked for the property that makes it sound: the
model scores inputs whose unread positions are garbage (NaN) and whose read
positions went through the cast bit-identically to the real inputs.
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from _trim.reads import FeatureRead
from signatures.derive.export_graph import trace
from signatures.derive.export_reads import program_reads
from signatures.derive.exporter import ExportError, check_reads, export
from signatures.derive.feature_reads import garbled
from signatures.derive.script_reads import script_reads
from signatures.derive.sub_feature_models import Bf16Scorer, MatryoshkaScorer
from signatures.derive.synthetic import input_keys, synthetic_inputs
from signatures.repository.module_info import ModelRepository
from signatures.schema import FeatureSchema

from . import read_models as m


def _feature(name, dtype, shape, source="candidate"):
    return {"name": name, "dtype": dtype, "shape": shape, "source": source,
            "transform": {"op": "identity"}}


SCHEMA = FeatureSchema.from_dict({"format": 1, "features": [
    _feature("emb", "float32", [256]), _feature("vec", "float32", [16], "user"),
    _feature("score", "float32", []), _feature("pos", "int64", [3])]})
NAMES = SCHEMA.names


def R(*ranges, dtype=None):
    return FeatureRead(tuple(ranges), dtype)


def P(*positions):
    return FeatureRead.from_positions(positions)


CAST_BF16, CAST_HALF = FeatureRead(None, "bfloat16"), FeatureRead(None, "float16")
# model -> (read by TorchScript, read by torch.export); None: not that format.
CASES = {
    "Prefix": {"emb": R((0, 64))},
    "Narrow": {"emb": R((8, 24))},
    "IndexList": {"emb": P(0, 3, 7)},
    "IndexSelect": {"emb": P(3, 7, 200)},
    "BufferIndex": {"emb": P(9, 250, 251)},
    "Select": {"emb": P(5, 255)},
    "Step": {"emb": P(0, 2, 4, 6, 8)},
    "Union": {"emb": R((0, 8), (100, 110), (120, 128))},
    "CastBf16": {"emb": CAST_BF16},
    "CastHalf": {"emb": CAST_HALF, "vec": CAST_HALF},
    "SliceThenCast": {"emb": R((0, 64), dtype="bfloat16")},
    "CastThenSlice": {"emb": R((64, 128), dtype="float16")},
    "AttributeBound": {"emb": R((0, 32))},
    "ViaHelper": {"emb": R((0, 64)), "vec": R((0, 4), dtype="bfloat16")},
    "CopiesThenCast": {"emb": R((0, 32), dtype="float16")},
    "LoopOfWidths": {"emb": R((248, 256)), "vec": R((8, 16))},
    # read whole where they must be
    "SliceAndWhole": {},
    "CastAndWide": {"vec": R((0, 8))},   # the cast is of a slice also read wide
    "RowSlice": {},
    "Reshaped": {},
    "DataIndex": {},
    "SliceInBranch": ({}, None),
    "SliceInCond": (None, {}),
    "ShapeBound": ({}, {"emb": R((0, 64))}),   # export specialises x.shape[1] to 256
    "OpaqueSubmodule": ({}, {"emb": R((0, 64))}),   # not inlined by TorchScript
}


def expected(name, fmt):
    case = CASES[name]
    return case[fmt == "export"] if isinstance(case, tuple) else case


def derived(name, fmt):
    """The reads derived for model ``name`` in ``fmt``, and the callable to check them on."""
    model = getattr(m, name)()
    if fmt == "torchscript":
        scripted = torch.jit.script(model)
        return script_reads(scripted, SCHEMA, NAMES), scripted
    program = trace(model, SCHEMA, NAMES)
    return program_reads(program, SCHEMA, input_keys(SCHEMA, NAMES)), program.module()


PARAMS = [(n, f) for n in CASES for f in ("torchscript", "export") if expected(n, f) is not None]


# Values at the edges: signed zeros, subnormals (float32, bf16 and fp16
# ones), values fp16 overflows on, ties at the bf16 and fp16 rounding
# boundaries (1 + 2^-8 lies halfway between two bf16 values); and NaN and
# the infinities, rarer, so that most scores stay finite.
EDGES = np.array([0.0, -0.0, 1e-45, -1e-42, 1e-39, 6e-8, 65520.0, -65519.0, 3.4e38,
                  1 + 2 ** -8, 1 + 3 * 2 ** -8, -(1 + 2 ** -8), 1 + 2 ** -11, 1 + 3 * 2 ** -11,
                  2 ** -14 * (1 + 2 ** -11), 0.1], dtype=np.float32)
NON_FINITE = np.array([np.nan, np.inf, -np.inf], dtype=np.float32)


def edge_inputs(rows, seed):
    """Synthetic inputs at random scales; from seed 2 on with some edge
    values, from seed 4 on with a few NaN and infinities too."""
    inputs = synthetic_inputs(SCHEMA, NAMES, rows, seed=seed, contiguous=True)
    rng = np.random.default_rng(seed)
    for name, t in inputs.items():
        if t.is_floating_point():
            a = t.numpy().copy() * rng.choice([1e-3, 1.0, 1e4], size=t.shape).astype(np.float32)
            if seed >= 2:
                mask = rng.random(t.shape) < 0.1
                a[mask] = rng.choice(EDGES, size=int(mask.sum()))
            if seed >= 4:
                mask = rng.random(t.shape) < 0.005
                a[mask] = rng.choice(NON_FINITE, size=int(mask.sum()))
            inputs[name] = torch.from_numpy(a)
    return inputs


def bits(t):
    return t.detach().contiguous().view(torch.uint8)


def assert_reads_are_sound(model, reads, rows_list=(1, 7), seeds=range(6)):
    """The model scores garbled inputs bit-identically to the real ones."""
    for rows in rows_list:
        for seed in seeds:
            inputs = edge_inputs(rows, seed)
            with torch.inference_mode():
                want = model(inputs)
                for fill in (float("nan"), float("inf"), 1e30):
                    got = model(garbled(inputs, reads, fill))
                    assert torch.equal(bits(got), bits(want)), (rows, seed, fill)


@pytest.mark.parametrize("name, fmt", PARAMS)
def test_derived_read(name, fmt):
    reads, model = derived(name, fmt)
    assert reads == expected(name, fmt)
    for feature, read in reads.items():   # each is a valid read of its feature
        f = SCHEMA[feature]
        read.check(feature, f.dtype, f.shape, f.ragged, "test")
    assert_reads_are_sound(model, reads)


def test_the_property_catches_a_read_too_narrow():
    model = torch.jit.script(m.Union())
    with pytest.raises(AssertionError):
        assert_reads_are_sound(model, {"emb": R((0, 8), (100, 110))}, seeds=range(1))
    with pytest.raises(AssertionError):
        assert_reads_are_sound(torch.jit.script(m.CastAndWide()),
                               {"vec": R((0, 8), dtype="float16")}, seeds=range(1))


def test_export_refuses_a_wrong_read_and_drops_reads_of_a_random_model():
    scripted = torch.jit.script(m.Prefix())
    with pytest.raises(ExportError, match="changes the model's scores.*--no-sub-feature"):
        check_reads(scripted, SCHEMA, NAMES, {"emb": R((0, 32))}, {})

    class Noisy(torch.nn.Module):
        def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
            x = features["emb"][:, :4]
            return x.sum(1) + torch.rand(x.shape[0])
    notes: dict = {}
    noisy = torch.jit.script(Noisy())
    assert check_reads(noisy, SCHEMA, NAMES, script_reads(noisy, SCHEMA, NAMES), notes) == {}
    assert "vary between two runs" in notes["sub_feature"]


# -- trimmer export --------------------------------------------------------------

DEMO = FeatureSchema.from_dict({"format": 1, "features": [
    _feature("pin_emb", "float32", [256]), _feature("user_emb", "float32", [256], "user"),
    _feature("pin_ctr", "float32", []), _feature("pin_vec", "float32", [8])]})


class WholeScorer(torch.nn.Module):
    """Reads the same features as MatryoshkaScorer, all of them."""

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        return features["pin_emb"].sum(1) * features["user_emb"].mean(1)


def _inputs_json(repo, model, version="1"):
    data = json.loads((repo / model / version / "module_info.json").read_text())
    return {i["name"]: i.get("read") for i in data["inputs"]}


@pytest.mark.parametrize("fmt", ["torchscript", "export"])
def test_export_writes_what_matryoshka_and_bf16_models_read(tmp_path, fmt):
    repo = tmp_path / "repo"
    mat = export(MatryoshkaScorer(["pin_emb", "user_emb"]), repo, "mat", DEMO, fmt=fmt)
    assert _inputs_json(repo, "mat") == {"pin_emb": {"ranges": [[0, 64]]},
                                         "user_emb": {"ranges": [[0, 64]]}}
    bf16 = export(Bf16Scorer(["pin_ctr", "pin_emb", "pin_vec"]), repo, "bf", DEMO, fmt=fmt)
    assert _inputs_json(repo, "bf") == dict.fromkeys(["pin_ctr", "pin_emb", "pin_vec"],
                                                     {"dtype": "bfloat16"})
    whole = export(WholeScorer(), repo, "whole", DEMO, fmt=fmt)
    assert _inputs_json(repo, "whole") == {"pin_emb": None, "user_emb": None}
    assert mat.signature_hash != whole.signature_hash
    # the opt-out: every feature whole, so the signature of a whole-read model
    off = export(MatryoshkaScorer(["pin_emb", "user_emb"]), repo, "mat_off", DEMO, fmt=fmt,
                 sub_feature=False)
    assert _inputs_json(repo, "mat_off") == {"pin_emb": None, "user_emb": None}
    assert off.signature_hash == whole.signature_hash and off.provenance["sub_feature"] is False
    # the served artifact scores garbled inputs as it scores the real ones
    for info in (mat, bf16):
        path, loaded = ModelRepository(repo).load(info.model, "1")
        model = torch.jit.load(path) if fmt == "torchscript" else torch.export.load(path).module()
        reads = {s.name: s.read for s in loaded.inputs if s.read is not None}
        inputs = synthetic_inputs(DEMO, loaded.input_names, 5, seed=3)
        with torch.inference_mode():
            assert torch.equal(bits(model(garbled(inputs, reads))), bits(model(inputs)))


def test_a_model_reads_the_same_in_both_formats(tmp_path):
    a = export(MatryoshkaScorer(["pin_emb"]), tmp_path, "a", DEMO, fmt="torchscript")
    b = export(MatryoshkaScorer(["pin_emb"]), tmp_path, "b", DEMO, fmt="export")
    assert a.signature_hash == b.signature_hash


def test_a_changed_slice_is_a_new_signature(tmp_path):
    export(m.AttributeBound(32), tmp_path, "m", SCHEMA, version="1")
    with pytest.raises(ExportError) as err:
        export(m.AttributeBound(48), tmp_path, "m", SCHEMA, version="2")
    assert "~ emb" in str(err.value) and "'ranges': [[0, 48]]" in str(err.value)
    assert "--fork" in str(err.value)
    info = export(m.AttributeBound(48), tmp_path, "m", SCHEMA, fork="m48")
    assert info.input("emb").read == R((0, 48))


def test_a_saved_program_reads_what_its_graph_reads(tmp_path):
    torch.export.save(trace(m.SliceThenCast(), SCHEMA, ["emb"]), str(tmp_path / "m.pt2"))
    info = export(str(tmp_path / "m.pt2"), tmp_path / "repo", "saved", SCHEMA)
    assert info.artifact.kind == "export"
    assert info.input("emb").read == R((0, 64), dtype="bfloat16")


def test_cli_prints_the_reads_and_opts_out(tmp_path):
    schema = tmp_path / "schema.json"
    schema.write_text(json.dumps(SCHEMA.to_dict()))
    cmd = [sys.executable, "-m", "signatures.cli", "export", "tests.signatures.read_models:"
           "SliceThenCast", "--repo", str(tmp_path / "repo"), "--schema", str(schema)]
    r = subprocess.run(cmd + ["--model", "on"], capture_output=True, text=True, cwd=os.getcwd())
    assert r.returncode == 0, r.stderr
    assert "1 features (emb[0:64] as bfloat16)" in r.stdout
    r = subprocess.run(cmd + ["--model", "off", "--no-sub-feature"], capture_output=True,
                       text=True, cwd=os.getcwd())
    assert r.returncode == 0, r.stderr
    assert "1 features (emb)" in r.stdout
    assert _inputs_json(tmp_path / "repo", "on") == {"emb": {"ranges": [[0, 64]],
                                                             "dtype": "bfloat16"}}
    assert _inputs_json(tmp_path / "repo", "off") == {"emb": None}


@st.composite
def random_parts(draw):
    width = draw(st.integers(2, 300))
    bound = st.one_of(st.none(), st.integers(-width - 3, width + 3))
    idx = draw(st.lists(st.integers(-width, width - 1), min_size=1, max_size=6))
    return width, draw(bound), draw(bound), draw(st.integers(1, 5)), idx, draw(
        st.sampled_from([None, "bfloat16", "float16"]))


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(random_parts())
def test_random_slices_of_random_widths_read_exactly_their_positions(case):
    width, start, end, step, idx, cast = case
    schema = FeatureSchema.from_dict({"format": 1, "features": [
        _feature("emb", "float32", [width])]})
    cls = {None: m.RandomParts, "bfloat16": m.RandomPartsBf16, "float16": m.RandomPartsHalf}
    model = cls[cast](start if start is not None else 0, end if end is not None else width,
                      step, idx)
    positions = set(range(width)[start:end:step]) | {i % width for i in idx}
    ranges = FeatureRead.from_positions(positions).ranges
    want = FeatureRead(None if ranges == ((0, width),) else ranges, cast)
    want_reads = {} if want.whole else {"emb": want}
    scripted = torch.jit.script(model)
    program = trace(model, schema, ["emb"])
    assert script_reads(scripted, schema, ["emb"]) == want_reads
    assert program_reads(program, schema, ["emb"]) == want_reads
    rng = np.random.default_rng(width)
    for rows in (1, 4):
        x = rng.standard_normal((rows, width)).astype(np.float32)
        x[rng.random(x.shape) < 0.2] = rng.choice(EDGES, size=1)
        inputs = {"emb": torch.from_numpy(x)}
        for run in (scripted, program.module()):
            with torch.inference_mode():
                assert torch.equal(bits(run(garbled(inputs, want_reads))), bits(run(inputs)))
