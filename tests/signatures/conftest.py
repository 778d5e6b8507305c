import json

import pytest

SCHEMA = {
    "format": 1,
    "features": [
        {"name": "user_emb", "dtype": "float32", "shape": [8], "kind": "dense",
         "source": "user", "transform": {"op": "identity"}},
        {"name": "pin_ctr_7d", "dtype": "float32", "shape": [], "source": "candidate",
         "raw": "ctr_7d", "transform": {"op": "log1p"}, "default": 0},
        {"name": "pin_age_days", "dtype": "float32", "source": "candidate",
         "transform": {"op": "clip", "lo": 0, "hi": 365}},
        {"name": "pin_quality", "dtype": "float32", "source": "candidate",
         "transform": {"op": "standardize", "mean": 0.5, "std": 0.2}},
        {"name": "user_recent_pins", "dtype": "int64", "kind": "ragged", "source": "user",
         "transform": {"op": "hash", "buckets": 1000}},
        {"name": "pin_tags", "dtype": "int64", "kind": "ragged", "source": "candidate",
         "transform": {"op": "hash", "buckets": 1000}},
        {"name": "pin_emb", "dtype": "float32", "shape": [8], "source": "candidate",
         "transform": {"op": "identity"}},
        {"name": "user_pin_affinity", "dtype": "float32", "source": "cross",
         "transform": {"op": "dot", "inputs": ["user_emb", "pin_emb"]}},
        {"name": "pin_lang", "dtype": "int32", "source": "candidate",
         "transform": {"op": "identity"}},
    ],
}


@pytest.fixture
def schema_dict():
    return json.loads(json.dumps(SCHEMA))


@pytest.fixture
def schema_path(tmp_path, schema_dict):
    p = tmp_path / "schema.json"
    p.write_text(json.dumps(schema_dict))
    return p


@pytest.fixture
def schema(schema_path):
    from signatures.schema import FeatureSchema
    return FeatureSchema.load(schema_path)


def pytest_collection_modifyitems(items):
    # torch 2.x deprecates TorchScript, which is this project's model format.
    for item in items:
        if "tests/signatures" in str(item.fspath):
            item.add_marker(pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning"))
