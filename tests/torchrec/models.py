"""Small TorchRec models in the shapes production rankers have (tables of
1,000 rows x 16 dims, to keep the suite fast), over the root world's schema
(tests/root/world.py): ragged ids ``user_recent_pins`` (per-request, 1,000
hash buckets) and ``pin_topics`` (512 buckets), dense float columns.

Imported only when torchrec is installed (tests/torchrec/conftest.py)."""
# No `from __future__ import annotations`: fx copies forward annotations into code TorchScript compiles.

import numpy as np
import torch
from torchrec import EmbeddingBagCollection, EmbeddingBagConfig, EmbeddingCollection, EmbeddingConfig
from torchrec.models.dlrm import DLRM, DLRM_DCN
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from signatures.derive.torchrec_model import TorchRecInputs, TorchRecModel

ROWS, DIM = 1000, 16


def bag(name, keys, rows=ROWS, dim=DIM):
    return EmbeddingBagConfig(name=name, embedding_dim=dim, num_embeddings=rows, feature_names=keys)


def dlrm() -> TorchRecModel:
    """DLRM: one table per key, the user's recent pins sent once per request."""
    torch.manual_seed(1)
    ebc = EmbeddingBagCollection(tables=[bag("t_pins", ["user_recent_pins"]),
                                         bag("t_topics", ["pin_topics"])])
    model = DLRM(embedding_bag_collection=ebc, dense_in_features=11,
                 dense_arch_layer_sizes=[32, DIM], over_arch_layer_sizes=[32, 1])
    return TorchRecModel(model, TorchRecInputs(
        dense=("pin_ctr_7d", "pin_quality", "user_age", "pin_emb")))


def dcn() -> TorchRecModel:
    """DCN (torchrec's DLRM_DCN, low-rank cross net): one table shared by two KJT keys."""
    torch.manual_seed(2)
    ebc = EmbeddingBagCollection(tables=[bag("t_ids", ["topics", "pins"])])
    model = DLRM_DCN(embedding_bag_collection=ebc, dense_in_features=10,
                     dense_arch_layer_sizes=[32, DIM], over_arch_layer_sizes=[32, 1],
                     dcn_num_layers=2, dcn_low_rank_dim=8)
    return TorchRecModel(model, TorchRecInputs(
        dense=("pin_age_days", "user_emb", "user_pin_affinity"),
        sparse={"topics": "pin_topics", "pins": "user_recent_pins"}))


class TwoCollections(torch.nn.Module):
    """Reads ``pin_topics`` through ``used``; ``spare`` (its own table, its own
    key) is never called: an unused table."""

    def __init__(self, weighted: bool = False):
        super().__init__()
        self.used = EmbeddingBagCollection(tables=[bag("t_topics", ["pin_topics"])],
                                           is_weighted=weighted)
        self.spare = EmbeddingBagCollection(tables=[bag("t_spare", ["pin_words"])])
        self.head = torch.nn.Linear(DIM + 1, 1)

    def forward(self, dense: torch.Tensor, kjt: KeyedJaggedTensor) -> torch.Tensor:
        pooled = self.used(kjt).values()
        return self.head(torch.cat([pooled, dense], 1))


class Sequence(torch.nn.Module):
    """An EmbeddingCollection (unpooled: one vector per id) with its own mean pooling."""

    def __init__(self):
        super().__init__()
        self.ec = EmbeddingCollection(tables=[EmbeddingConfig(
            name="t_seq", embedding_dim=DIM, num_embeddings=ROWS, feature_names=["pin_topics"])])
        self.head = torch.nn.Linear(DIM, 1)

    def forward(self, kjt: KeyedJaggedTensor) -> torch.Tensor:
        jt = self.ec(kjt)["pin_topics"]
        rows = jt.lengths().shape[0]
        row_of = torch.repeat_interleave(torch.arange(rows), jt.lengths())
        summed = torch.zeros([rows, DIM]).index_add_(0, row_of, jt.values())
        mean = summed / jt.lengths().clamp(min=1).unsqueeze(1).float()
        return self.head(mean)


def eager_scores(wrapped, keys: list[str], feats: dict, rows: int) -> np.ndarray:
    """The model's own call on features laid out as TorchRec expects: per row, each key's ids
    (a per-request list repeated on every row), and the dense columns side by side."""
    spec = wrapped.inputs
    values, lengths = [], []
    for key in keys:
        v, off = feats[spec.sparse.get(key, key)]
        n = np.diff(off)
        if len(off) == 2 and rows != 1:   # per-request: one list for every row
            v, n = np.tile(v, rows), np.repeat(n, rows)
        values.append(torch.from_numpy(v.astype(np.int64)))
        lengths.append(torch.from_numpy(n.astype(np.int64)))
    cols = []
    for name in spec.dense:
        col = torch.from_numpy(np.ascontiguousarray(feats[name], dtype=np.float32))
        col = col.reshape(col.shape[0], -1)
        cols.append(col.expand(rows, col.shape[1]))
    kjt = KeyedJaggedTensor(keys=keys, values=torch.cat(values), lengths=torch.cat(lengths))
    with torch.inference_mode():
        return wrapped.model(torch.cat(cols, 1), kjt).reshape(-1).numpy()
