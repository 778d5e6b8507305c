"""A TorchRec model's signature comes from the tables its fx graph looks up
(their configs' feature_names) and its TorchRecInputs, over several shapes:
a table shared by two keys, a spec naming keys no table reads, a weighted
collection, an EmbeddingCollection, a collection never called. The exported
artifact scores like the model called eagerly on a KeyedJaggedTensor."""

import numpy as np
import pytest
import torch

from signatures.derive.exporter import export
from signatures.derive.sources import ExportError
from signatures.derive.torchrec_model import TorchRecInputs, TorchRecModel, plan, trace
from signatures.repository.module_info import ModelRepository


def signature(wrapped, schema, tmp_path, name="m"):
    info = export(wrapped, tmp_path / "repo", name, schema)
    return info, [s.name for s in info.inputs]


def test_dlrm_reads_its_keys_and_dense_columns(models, schema, tmp_path):
    info, names = signature(models.dlrm(), schema, tmp_path)
    assert names == ["pin_ctr_7d", "pin_emb", "pin_quality", "pin_topics", "user_age",
                     "user_recent_pins"]
    assert info.artifact.runtime == "torchrec"
    assert info.provenance["derived"] == "torchrec tables"


def test_a_table_shared_by_two_keys_maps_both(models, schema, tmp_path):
    info, names = signature(models.dcn(), schema, tmp_path)
    assert names == ["pin_age_days", "pin_topics", "user_emb", "user_pin_affinity",
                     "user_recent_pins"]
    assert info.provenance["torchrec"]["keys"] == {"topics": "pin_topics",
                                                   "pins": "user_recent_pins"}


def test_keys_no_table_reads_are_not_in_the_signature(models, schema, tmp_path):
    # The spec maps three keys; the model's one table reads one of them.
    spec = TorchRecInputs(dense=("pin_quality",),
                          sparse={"pin_topics": "pin_topics", "pins": "user_recent_pins",
                                  "words": "pin_words"})
    _, names = signature(TorchRecModel(models.TwoCollections(), spec), schema, tmp_path)
    assert names == ["pin_quality", "pin_topics"]


def test_a_collection_never_called_reads_nothing(models, schema, tmp_path):
    info, names = signature(TorchRecModel(models.TwoCollections(),
                                          TorchRecInputs(dense=("pin_quality",))), schema, tmp_path)
    assert "pin_words" not in names
    assert info.provenance["torchrec"]["unused_tables"] == ["t_spare"]


def test_weighted_features_bring_their_weight_column(models, schema, tmp_path):
    spec = TorchRecInputs(dense=("pin_quality",), weights={"pin_topics": "pin_topic_weights"})
    _, names = signature(TorchRecModel(models.TwoCollections(weighted=True), spec), schema,
                         tmp_path)
    assert names == ["pin_quality", "pin_topic_weights", "pin_topics"]
    # Without a weight feature every id weighs 1.
    _, names = signature(TorchRecModel(models.TwoCollections(weighted=True),
                                       TorchRecInputs(dense=("pin_quality",))), schema,
                         tmp_path, "unweighted")
    assert names == ["pin_quality", "pin_topics"]


def test_an_embedding_collection_for_sequences(models, schema, tmp_path):
    _, names = signature(TorchRecModel(models.Sequence(), TorchRecInputs(call="kjt")), schema,
                         tmp_path)
    assert names == ["pin_topics"]


def test_a_key_the_schema_lacks_is_refused_naming_it(models, schema):
    spec = TorchRecInputs(dense=("pin_age_days",), sparse={"topics": "pin_topiks"})
    model = models.dcn().model
    with pytest.raises(ExportError) as e:
        plan(model, spec, schema, trace(model))
    assert "'pins'" in str(e.value) and "user_recent_pins" not in str(e.value).split("'pins'")[0]
    assert "'pin_topiks'" in str(e.value) and "schema lacks" in str(e.value)


def test_ids_must_fit_the_table(models, schema):
    from torchrec import EmbeddingBagCollection
    model = models.TwoCollections()
    model.used = EmbeddingBagCollection(tables=[models.bag("t_small", ["pin_topics"], rows=100)])
    with pytest.raises(ExportError, match="512 buckets but the table has 100 rows"):
        plan(model, TorchRecInputs(dense=("pin_quality",)), schema, trace(model))


def test_what_is_refused(models, schema, tmp_path):
    with pytest.raises(ExportError, match="TorchRecModel"):   # no input spec
        export(models.dcn().model, tmp_path / "repo", "m", schema)
    with pytest.raises(ExportError, match="cannot be exported as aoti"):
        export(models.dcn(), tmp_path / "repo", "m", schema, fmt="aoti")
    weighted = TorchRecModel(models.TwoCollections(weighted=True), TorchRecInputs(dense=("pin_quality",)))
    with pytest.raises(ExportError, match="weighted collection cannot be exported as a torch.export"):
        export(weighted, tmp_path / "repo", "m", schema, fmt="export")
    with pytest.raises(ExportError, match="--features is not for a TorchRec model"):
        export(models.dcn(), tmp_path / "repo", "m", schema, features=["pin_topics"])
    with pytest.raises(ExportError, match="must be a dense float feature"):
        export(TorchRecModel(models.Sequence(), TorchRecInputs(dense=("pin_topics",))),
               tmp_path / "repo", "m", schema)


def test_the_artifact_scores_like_the_model_called_eagerly(models, schema, tmp_path):
    from torchrec import KeyedJaggedTensor
    wrapped = models.dcn()
    info, _ = signature(wrapped, schema, tmp_path)
    path, _ = ModelRepository(tmp_path / "repo").load(info.model, info.version)
    artifact = torch.jit.load(path)
    rng = np.random.default_rng(3)
    rows = 7
    topics_len = rng.integers(0, 4, rows)
    topics = torch.from_numpy(rng.integers(0, 512, int(topics_len.sum())))
    pins = torch.from_numpy(rng.integers(0, 1000, 3))
    dense = {n: torch.from_numpy(rng.standard_normal(rows).astype(np.float32))
             for n in ("pin_age_days", "user_pin_affinity")}
    user_emb = torch.from_numpy(rng.standard_normal((1, 8)).astype(np.float32))
    feats = {"pin_topics.values": topics,
             "pin_topics.offsets": torch.from_numpy(np.concatenate([[0], np.cumsum(topics_len)])),
             "user_recent_pins.values": pins, "user_recent_pins.offsets": torch.tensor([0, 3]),
             "user_emb": user_emb.expand(rows, 8), **dense}
    # The model's own call, built by hand: the user's pins repeated on every row.
    kjt = KeyedJaggedTensor(keys=["topics", "pins"], values=torch.cat([topics, pins.repeat(rows)]),
                            lengths=torch.cat([torch.from_numpy(topics_len),
                                               torch.full((rows,), 3)]))
    dense_t = torch.cat([dense["pin_age_days"][:, None], user_emb.expand(rows, 8),
                         dense["user_pin_affinity"][:, None]], 1)
    with torch.inference_mode():
        want = wrapped.model(dense_t, kjt)
        got = artifact(feats)
    assert torch.equal(got, want)
