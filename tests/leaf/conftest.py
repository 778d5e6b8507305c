import numpy as np
import pytest

from tests.support.models import spec, spin_for, write_model

CTR_INPUTS = [
    spec("pin_ctr"),
    spec("pin_emb", shape=(4,)),
    spec("user_emb", shape=(4,), per_request=True),
    spec("pin_lang", "int32"),
    spec("pin_new", "bool"),
    spec("pin_tags", "int64", ragged=True),
    spec("user_recent", "int64", ragged=True, per_request=True),
]
# No per-request ragged input: requests from different users can merge.
ENG_INPUTS = [spec("pin_ctr"), spec("user_emb", shape=(4,), per_request=True),
              spec("pin_tags", "int64", ragged=True)]
BAD_INPUTS = [spec("x"), spec("y", shape=(2,))]
SLOW_INPUTS = [spec("x")]


class Repo:
    def __init__(self, root):
        self.root = root
        self.models = {}

    def add(self, model, version, inputs, **kw):
        path, info = write_model(self.root, model, version, inputs, **kw)
        self.models[info.key] = (path, info, inputs)
        return path, info


@pytest.fixture(scope="session")
def repo(tmp_path_factory):
    r = Repo(tmp_path_factory.mktemp("models"))
    r.add("ctr", "3", CTR_INPUTS)
    r.add("eng", "1", ENG_INPUTS)
    r.add("bad", "1", BAD_INPUTS, fail_on="x")
    r.add("slow", "1", SLOW_INPUTS, spin=spin_for(0.2))  # 0.2 s per 256 rows
    return r




MAX_MESSAGE_BYTES = 1 << 20


@pytest.fixture(scope="module")
def leaf(module_process_runner, repo):
    """One shared leaf over ipc: dynamic batching on, 1 MiB message limit."""
    return module_process_runner.leaf(repo.root, models=["ctr@3", "eng@1", "bad@1"], name="shared",
                              args=["--max-wait-ms", "5",
                                    "--max-message-bytes", str(MAX_MESSAGE_BYTES)])


@pytest.fixture
def shm_dir(tmp_path, monkeypatch):
    """A private segment directory for the leaves this test spawns."""
    path = tmp_path / "shm"
    path.mkdir()
    monkeypatch.setenv("TRIMMER_SHM_DIR", str(path))  # inherited by the spawned leaf
    return path


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
