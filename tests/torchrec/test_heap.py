"""A leaf reuses the memory of one batch for the next.

A ranker's forward allocates the same megabytes of activations every batch.
With glibc's defaults (as the leaf ran before) the model thread's heap was
trimmed after a batch (madvise DONTNEED on its top) and the next batch
faulted those pages in afresh: on the realistic DLRM at 256 candidates
350-800 page faults a batch, the faults a tenth of the forward's CPU. The
leaf now tunes malloc at start as the root does (_trim/memory.py).
"""
from __future__ import annotations

import glob
import json

import numpy as np
import pytest

from tests.support.models import encode_columns, random_columns
from tests.support.procs import Client

ROWS = 256
WINDOW = 20    # batches a figure is averaged over
WINDOWS = 10


def minor_faults(pid: int) -> dict[str, int]:
    """Minor page faults of each thread of ``pid`` (thread id -> count)."""
    out = {}
    for task in glob.glob(f"/proc/{pid}/task/*"):
        try:
            with open(f"{task}/stat") as f:
                out[task.rsplit("/", 1)[1]] = int(f.read().rsplit(")", 1)[1].split()[7])
        except OSError:   # a thread that ended meanwhile
            pass
    return out


@pytest.fixture(scope="module")
def dlrm_repo(tmp_path_factory):
    from rootproc.demo.realistic import realistic_models, realistic_schema
    from rootproc.demo.schema_gen import demo_schema
    from signatures.derive.exporter import export
    from signatures.schema import FeatureSchema
    tmp = tmp_path_factory.mktemp("heap")
    (tmp / "schema.json").write_text(json.dumps(realistic_schema(demo_schema(0, 1.0), 1000)))
    schema = FeatureSchema.load(tmp / "schema.json")
    info = export(realistic_models(schema, 1000)["dlrm"], tmp / "repo", "dlrm", schema, version="1")
    batch = encode_columns(list(info.inputs),
                           random_columns(list(info.inputs), ROWS, np.random.default_rng(0)), ROWS)
    return tmp / "repo", batch


def test_a_batch_reuses_the_memory_of_the_one_before(process_runner, dlrm_repo):
    repo, batch = dlrm_repo
    leaf = process_runner.leaf(repo, models=["dlrm@1"], args=["--max-wait-ms", "0"])
    windows = []   # page faults a batch, every thread of the leaf
    with Client(leaf.endpoint) as client:
        for _ in range(WINDOWS):
            before = minor_faults(leaf.pid)
            for _ in range(WINDOW):
                header, scores = client.score("dlrm@1", batch, ROWS, timeout=30)
                assert header.get("ok") and scores is not None and len(scores) == ROWS, header
            after = minor_faults(leaf.pid)
            windows.append(sum(after[t] - before.get(t, 0) for t in after) / WINDOW)
    print(f"\npage faults a batch, windows of {WINDOW} batches: {windows}")
    # The first batches touch the heap's pages once; from then on next to
    # none a batch (a window may catch a one-off: a ping, a collection).
    # Before, every window had hundreds: 415-725 a batch.
    assert float(np.median(windows[1:])) < 5.0, windows
