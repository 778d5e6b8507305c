"""Production-sized TorchRec rankers over the demo schema (needs the ``[torchrec]`` extra).

Two models as recommenders write them, each reading its own subset of the
schema through a `TorchRecInputs` spec (signatures/derive/torchrec_model.py):

- ``dlrm``: ``torchrec.models.dlrm.DLRM``, 27 sparse features (26 candidate
  id lists ``pin_ids_00``..``pin_ids_25`` over tables of 100,000 rows, the
  user's ``user_topics`` over 10,000), 64-dim embeddings, 16 dense columns,
  dense MLP 512-256-64, over MLP 512-256-1;
- ``dcn``: ``torchrec.models.dlrm.DLRM_DCN`` (a low-rank cross net of 3
  layers), 27 sparse features (``pin_ids_24``..``pin_ids_49`` and the
  user's ``user_recent_pins`` over 1,000,000 rows), 64-dim embeddings, 161
  dense columns (counters, the user embedding, an affinity), the same MLPs.

A table has as many rows as its feature's hash buckets; ``max_rows`` caps
them (tests and quick benches), and `realistic_schema` caps the buckets to
match, since an export refuses ids that overflow their table. torchrec is
imported only when a model is built.
"""
from __future__ import annotations

import copy

import torch

DIM = 64
DENSE_ARCH = [512, 256, DIM]
OVER_ARCH = [512, 256, 1]
SPECS = {
    "dlrm": {"sparse": [f"pin_ids_{i:02d}" for i in range(26)] + ["user_topics"],
             "dense": [f"pin_cnt_{i:04d}" for i in range(13)] + [f"user_cnt_{i:02d}" for i in range(3)]},
    "dcn": {"sparse": [f"pin_ids_{i:02d}" for i in range(24, 50)] + ["user_recent_pins"],
            "dense": ([f"pin_cnt_{i:04d}" for i in range(500, 532)] + ["user_emb", "affinity_0"])},
}


def realistic_schema(schema: dict, max_rows: int | None = None) -> dict:
    """The demo schema with hash buckets capped at ``max_rows`` (None: as it is)."""
    out = copy.deepcopy(schema)
    if max_rows:
        for f in out["features"]:
            t = f.get("transform", {})
            if t.get("op") == "hash":
                t["buckets"] = min(int(t["buckets"]), int(max_rows))
    return out


def realistic_models(schema, max_rows: int | None = None, seed: int = 0) -> dict:
    """{name: TorchRecModel} for ``schema`` (a FeatureSchema of `realistic_schema`)."""
    from torchrec import EmbeddingBagCollection, EmbeddingBagConfig
    from torchrec.models.dlrm import DLRM, DLRM_DCN

    from signatures.derive.torchrec_model import TorchRecInputs, TorchRecModel

    models = {}
    for i, (name, spec) in enumerate(SPECS.items()):
        torch.manual_seed(seed + i)
        tables = []
        for key in spec["sparse"]:
            rows = int(schema[key].transform["buckets"])
            tables.append(EmbeddingBagConfig(name=f"t_{key}", embedding_dim=DIM,
                                             num_embeddings=min(rows, max_rows or rows),
                                             feature_names=[key]))
        ebc = EmbeddingBagCollection(tables=tables)
        width = sum(max(1, (schema[n].shape or (1,))[0]) for n in spec["dense"])
        if name == "dlrm":
            model = DLRM(embedding_bag_collection=ebc, dense_in_features=width,
                         dense_arch_layer_sizes=DENSE_ARCH, over_arch_layer_sizes=OVER_ARCH)
        else:
            model = DLRM_DCN(embedding_bag_collection=ebc, dense_in_features=width,
                             dense_arch_layer_sizes=DENSE_ARCH, over_arch_layer_sizes=OVER_ARCH,
                             dcn_num_layers=3, dcn_low_rank_dim=DIM)
        models[name] = TorchRecModel(model.eval(), TorchRecInputs(dense=tuple(spec["dense"])))
    return models
