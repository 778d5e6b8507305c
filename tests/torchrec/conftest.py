"""TorchRec tests (but test_runtime's) need the ``[torchrec]`` extra. Without
it they skip, naming why; under CI (TRIMMER_TEST_SERVICES=required, as `.ci/run` sets, after
`make install` put the extra in) a missing extra fails them instead."""
from __future__ import annotations

import json
import os

import pytest

from signatures.repository.torchrec_runtime import TorchRecUnavailable, require
from signatures.schema import FeatureSchema
from tests.root.world import SCHEMA


def pytest_collection_modifyitems(config, items):
    if os.environ.get("TRIMMER_TEST_SERVICES") == "required":
        return   # CI: they run, and fail on the missing extra
    try:
        require()
        return
    except TorchRecUnavailable as exc:
        reason = str(exc)
    here = os.path.dirname(__file__)
    for item in items:
        if str(item.fspath).startswith(here) and not item.fspath.basename.startswith("test_runtime"):
            item.add_marker(pytest.mark.skip(reason=reason))


from tests.root.conftest import world  # noqa: E402,F401  the root tests' serving world

# The root world's schema with a weight feature, for weighted collections.
WEIGHTS = {"name": "pin_topic_weights", "dtype": "float32", "kind": "ragged", "source": "candidate"}


@pytest.fixture(scope="module")
def models():
    from tests.torchrec import models  # needs torchrec: imported only by tests that run
    return models


@pytest.fixture(scope="module")
def schema():
    d = json.loads(json.dumps(SCHEMA))
    d["features"].append(WEIGHTS)
    return FeatureSchema.from_dict(d)
