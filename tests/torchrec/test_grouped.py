"""Grouped columns for TorchRec models (docs/protocol.md, "Grouped columns"):
the KeyedJaggedTensor and the dense tensor the model receives are views on
the received message (no host copy), per-request lists are looked up once
(TorchRec's variable batch size), and the scores equal, bit for bit, the
eager model's and the per-feature path's (a leaf or root that predates
groups), for DLRM, DCN (a shared table), a weighted collection and an
EmbeddingCollection."""

import numpy as np
import pytest
import torch

import _trim
from _trim import Batch, Layout, Ragged
from leafproc.tensors import HostTensors, Part, StagedTensors
from signatures.derive.exporter import export
from signatures.derive.torchrec_model import TorchRecInputs, TorchRecModel, groups_of, plan, trace
from signatures.repository.module_info import ModelRepository
from tests.support.models import random_columns
from tests.torchrec.models import eager_scores


def weighted(models):
    return TorchRecModel(models.TwoCollections(weighted=True), TorchRecInputs(
        dense=("pin_quality",), weights={"pin_topics": "pin_topic_weights"}))


def sequence(models):
    return TorchRecModel(models.Sequence(), TorchRecInputs(call="kjt"))


def columns(info, rows, seed):
    cols = random_columns(list(info.inputs), rows, np.random.default_rng(seed))
    if "pin_topic_weights" in cols:   # one weight per id
        ids = cols["pin_topics"]
        cols["pin_topic_weights"] = (np.random.default_rng(seed).random(len(ids[0])).astype("f4"),
                                     ids[1])
    return cols


def message(info, cols, rows, grouped: bool) -> np.ndarray:
    layout = Layout(s.column_spec() for s in info.inputs)
    batch = Batch.from_arrays(layout, {k: Ragged(*v) if isinstance(v, tuple) else v
                                       for k, v in cols.items()}, rows)
    plan = _trim.compile_plan(layout, info.input_names, None, info.groups if grouped else ())
    return _trim.encode(plan, batch)


def leaf_features(info, msg, builder=None) -> dict:
    """The features dict a leaf builds from ``msg``, as its worker does."""
    decoded = _trim.decode(msg)
    part = Part(decoded, np.frombuffer(msg, np.uint8, count=decoded.nbytes), decoded.n_rows)
    return (builder or HostTensors()).build([part], list(info.inputs), groups=info.groups)


def eager(wrapped, keys, cols, rows):
    """The model's own call; a weighted one's KJT carries the weights."""
    if not any(isinstance(m, torch.nn.Module) and getattr(m, "is_weighted", lambda: False)()
               for m in wrapped.model.modules()) and wrapped.inputs.call == "dense_kjt":
        return eager_scores(wrapped, keys, cols, rows)
    from torchrec import KeyedJaggedTensor
    v, off = cols["pin_topics"]
    kjt = KeyedJaggedTensor(keys=["pin_topics"], values=torch.from_numpy(v),
                            lengths=torch.from_numpy(np.diff(off)),
                            weights=torch.from_numpy(cols["pin_topic_weights"][0])
                            if "pin_topic_weights" in cols else None)
    with torch.inference_mode():
        if wrapped.inputs.call == "kjt":
            return wrapped.model(kjt).reshape(-1).numpy()
        dense = torch.from_numpy(cols["pin_quality"]).reshape(rows, 1)
        return wrapped.model(dense, kjt).reshape(-1).numpy()


CASES = {"dlrm": (lambda m: m.dlrm(), ["user_recent_pins", "pin_topics"]),
         "dcn": (lambda m: m.dcn(), ["topics", "pins"]),
         "weighted": (weighted, ["pin_topics"]),
         "sequence": (sequence, ["pin_topics"])}


@pytest.mark.parametrize("name", sorted(CASES))
def test_grouped_and_per_feature_messages_score_as_the_eager_model(models, schema, tmp_path, name):
    make, keys = CASES[name]
    wrapped = make(models)
    info = export(wrapped, tmp_path / "repo", name, schema)
    assert info.groups, "a TorchScript TorchRec artifact lists its groups"
    path, _ = ModelRepository(tmp_path / "repo").load(info.model, info.version)
    artifact = torch.jit.load(path)
    for rows in (1, 7, 64):
        cols = columns(info, rows, rows)
        want = eager(wrapped, keys, cols, rows)
        for grouped in (True, False):
            msg = message(info, cols, rows, grouped)
            feats = leaf_features(info, msg)
            assert any(n.startswith("[") for n in feats) == grouped
            with torch.inference_mode():
                got = artifact(feats).reshape(-1).numpy()
            np.testing.assert_array_equal(got, want, err_msg=f"{name} rows={rows} grouped={grouped}")


def inside(t: torch.Tensor, msg: np.ndarray) -> bool:
    start = msg.ctypes.data
    return start <= t.data_ptr() and t.data_ptr() + t.nbytes <= start + msg.nbytes


def test_the_model_gets_views_on_the_message_and_each_user_list_once(models, schema):
    """DLRM's SparseArch gets the KJT, its DenseArch the dense tensor: both on
    the received message's memory; the user's list is in it once (variable
    batch size), not once per row."""
    wrapped = models.dlrm()
    model = wrapped.model.eval()
    p = plan(model, wrapped.inputs, schema, trace(model))
    keys, groups = groups_of(p, schema)
    from signatures.derive.torchrec_model import adapter
    module = adapter(p, model, schema, "dense_kjt")
    ids, dense = groups[0], groups[1]
    module.grouped(ids.name, "", dense.name, keys, ids.per_request, True)
    seen = {}
    model.sparse_arch.register_forward_pre_hook(lambda _, a: seen.setdefault("kjt", a[0]))
    model.dense_arch.register_forward_pre_hook(lambda _, a: seen.setdefault("dense", a[0]))
    from signatures.repository.module_info import ModuleInfo, TensorSpec
    info = ModuleInfo("dlrm", "1", [TensorSpec.from_feature(schema[n]) for n in p.names],
                      groups=groups)
    rows = 50
    cols = columns(info, rows, 5)
    # A list at least as long as the KJT has keys: looked up once (shorter ones
    # are repeated on a CPU, where that is cheaper than gathering every key's rows).
    cols["user_recent_pins"] = (np.array([3, 1, 4, 1, 5], np.int64), np.array([0, 5], np.int64))
    msg = message(info, cols, rows, grouped=True)
    feats = leaf_features(info, msg)
    with torch.inference_mode():
        got = module(feats).reshape(-1).numpy()
    kjt, dense_t = seen["kjt"], seen["dense"]
    assert inside(kjt.values(), msg) and inside(kjt.offsets(), msg)
    assert inside(dense_t, msg) and dense_t.is_contiguous() and dense_t.shape == (rows, 11)
    user = cols["user_recent_pins"][0]
    assert kjt.values().numel() == len(cols["pin_topics"][0]) + len(user)
    assert kjt.variable_stride_per_key() and kjt.stride() == rows
    np.testing.assert_array_equal(got, eager_scores(wrapped, ["user_recent_pins", "pin_topics"],
                                                    cols, rows))
    cols["user_recent_pins"] = (np.array([7], np.int64), np.array([0, 1], np.int64))
    seen.clear()
    with torch.inference_mode():
        got = module(leaf_features(info, message(info, cols, rows, grouped=True))).reshape(-1)
    assert not seen["kjt"].variable_stride_per_key()   # one id: repeated, not gathered
    np.testing.assert_array_equal(got.numpy(), eager_scores(
        wrapped, ["user_recent_pins", "pin_topics"], cols, rows))
    cols["user_recent_pins"] = (np.zeros(0, np.int64), np.array([0, 0], np.int64))
    seen.clear()
    msg = message(info, cols, rows, grouped=True)
    with torch.inference_mode():
        got = module(leaf_features(info, msg)).reshape(-1)
    assert inside(seen["kjt"].values(), msg)   # an empty list: nothing to repeat, no copy
    np.testing.assert_array_equal(got.numpy(), eager_scores(
        wrapped, ["user_recent_pins", "pin_topics"], cols, rows))


def test_the_staged_builder_keeps_one_copy_and_the_group_offsets(models, schema, tmp_path):
    """The CUDA path's builder (run here on CPU): the groups are views on the
    one staged copy of the message, at the offsets they had in it."""
    wrapped = models.dcn()
    info = export(wrapped, tmp_path / "repo", "dcn", schema)
    cols = columns(info, 9, 2)
    msg = message(info, cols, 9, grouped=True)
    host = leaf_features(info, msg)
    staged = leaf_features(info, msg, StagedTensors(torch.device("cpu")))
    assert host.keys() == staged.keys()
    base = {t.untyped_storage().data_ptr() for t in staged.values()}
    assert len(base) == 1   # every tensor on the one staged buffer
    for name, t in host.items():
        assert torch.equal(t, staged[name]), name


def test_an_exported_program_or_mixed_ids_keep_the_per_feature_path(models, schema, tmp_path):
    """torch.export traces one path (the per-feature one), so its signature
    lists no groups; a model whose keys map to one feature twice, or to int32
    ids, neither."""
    info = export(models.dlrm(), tmp_path / "repo", "dlrm", schema, version="2", fmt="export")
    assert info.groups == []
    words = TorchRecModel(models.TwoCollections(), TorchRecInputs(
        dense=("pin_quality",), sparse={"pin_topics": "pin_words"}))
    info = export(words, tmp_path / "repo", "words", schema)
    assert [g.kind for g in info.groups] == ["dense"]   # int32 ids: no jagged group


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_a_gpu_the_groups_are_views_on_the_one_device_copy(models, schema, tmp_path):
    """The CUDA leaf's builder: one host-to-device copy of the message, the
    KJT's arrays and the dense tensor views on it; scores as the per-feature
    path's on the same device (within float tolerance: other kernels run)."""
    from signatures.repository import artifacts
    wrapped = models.dcn()
    info = export(wrapped, tmp_path / "repo", "dcn", schema)
    path, _ = ModelRepository(tmp_path / "repo").load(info.model, info.version)
    model = artifacts.load(path, info.artifact, torch.device("cuda"))
    cols = columns(info, 64, 3)
    scores = {}
    for grouped in (True, False):
        feats = leaf_features(info, message(info, cols, 64, grouped),
                              StagedTensors(torch.device("cuda")))
        assert {t.device.type for t in feats.values()} == {"cuda"}
        assert len({t.untyped_storage().data_ptr() for t in feats.values()}) == 1
        with torch.inference_mode():
            scores[grouped] = model(feats).reshape(-1).cpu().numpy()
    np.testing.assert_allclose(scores[True], scores[False], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["dlrm", "weighted"])
def test_merged_grouped_requests_score_as_merged_per_feature_ones(models, schema, tmp_path, name):
    """Dynamic batching: requests sharing their user's list merge (equal merge
    keys), grouped as per feature, and the merged forward gives the same bits
    either way (the grouped merge rebuilds the KJT key-major)."""
    from leafproc.tensors import merge_key
    make, _ = CASES[name]
    info = export(make(models), tmp_path / "repo", name, schema)
    path, _ = ModelRepository(tmp_path / "repo").load(info.model, info.version)
    artifact = torch.jit.load(path)
    user = (np.array([5, 6, 7, 8, 9, 10], np.int64), np.array([0, 6], np.int64))
    batches = []
    for rows, seed in ((3, 1), (8, 2), (5, 3)):
        cols = columns(info, rows, seed)
        if "user_recent_pins" in cols:
            cols["user_recent_pins"] = user
        batches.append((cols, rows))
    scores = {}
    for grouped in (True, False):
        parts = []
        for cols, rows in batches:
            msg = message(info, cols, rows, grouped)
            decoded = _trim.decode(msg)
            parts.append(Part(decoded, np.frombuffer(msg, np.uint8, count=decoded.nbytes), rows))
        keys = {merge_key(p.decoded, [s for s in info.inputs if s.ragged and s.per_request])
                for p in parts}
        assert len(keys) == 1
        feats = HostTensors().build(parts, list(info.inputs), groups=info.groups)
        with torch.inference_mode():
            scores[grouped] = artifact(feats).reshape(-1).numpy()
    np.testing.assert_array_equal(scores[True], scores[False])
    other = columns(info, 4, 9)
    if "user_recent_pins" in other:   # another user's list: another forward
        other["user_recent_pins"] = (np.array([1], np.int64), np.array([0, 1], np.int64))
        a, b = (_trim.decode(message(info, c, r, True)) for c, r in ((other, 4), batches[0]))
        assert merge_key(a, []) != merge_key(b, [])


def test_a_user_embedding_stays_sent_once_and_only_user_scalars_are_repeated(models, schema):
    """The dense group repeats its per-request members on every row: DLRM's
    one user scalar (4 bytes a row) is grouped; DCN's 8-wide user embedding (32 bytes a row)
    is not (it stays a per-request column, sent once), while its KJT is still
    grouped."""
    kinds = {}
    for name, make in (("dlrm", models.dlrm), ("dcn", models.dcn)):
        wrapped = make()
        model = wrapped.model.eval()
        _, groups = groups_of(plan(model, wrapped.inputs, schema, trace(model)), schema)
        kinds[name] = sorted(g.kind for g in groups)
    assert kinds == {"dlrm": ["dense", "jagged"], "dcn": ["jagged"]}
