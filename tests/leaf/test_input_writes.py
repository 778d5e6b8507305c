"""A model that writes to its input tensors, served from a shared-memory slot.

Slots are mapped read-only in the leaf (a leaf never scribbles on a root's
memory), so an in-place op on a tensor that aliases a slot would kill the
leaf with SIGSEGV, taking every request in flight with it. The leaf finds
such a model while warming it up and gives it private copies of its inputs
from then on; the root's slot is left as it was.
"""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from torch import Tensor

from tests.support.models import encode_columns, random_columns, spec, write_model
from tests.support.procs import Client, ping

pytestmark = pytest.mark.slow

INPUTS = [spec("x"), spec("w", shape=(3,))]


class ScribblesOnInputs(torch.nn.Module):
    """score = (x + 1) + sum(w) * 2, computed in place on its inputs."""

    def forward(self, features: dict[str, Tensor]) -> Tensor:
        x = features["x"]
        x.add_(1.0)
        w = features["w"]
        w.mul_(2.0)
        return x + w.sum(1)


@pytest.fixture
def scribbler(tmp_path):
    repo = tmp_path / "models"
    write_model(repo, "scribble", "1", INPUTS, module=ScribblesOnInputs())
    return repo


def test_a_model_writing_its_inputs_is_served_from_a_slot_and_the_slot_is_untouched(
        process_runner, scribbler, shm_dir):
    from _trim.transport.shm import SlotRing
    rows = 6
    cols = random_columns(INPUTS, rows, np.random.default_rng(7))
    msg = encode_columns(INPUTS, cols, rows).tobytes()
    want = (cols["x"] + 1.0) + (cols["w"] * 2.0).sum(1, dtype=np.float32)
    leaf = process_runner.leaf(str(scribbler), models=["scribble@1"], name="scribble")
    ring = SlotRing("scribble", 1 << 16, 2, directory=str(shm_dir))
    try:
        slot = ring.acquire()
        ring.slot(slot)[:len(msg)] = msg
        desc = ring.descriptor(slot, len(msg))
        with Client(leaf.endpoint) as c:
            for _ in range(3):   # the same slot again: the leaf's copy is fresh each time
                header, frames = c.request({"type": "score", "model": "scribble@1", "rows": rows,
                                            "compression": "none", "shm": desc}, timeout=10)
                assert header["ok"], header
                np.testing.assert_allclose(np.frombuffer(frames[0], dtype="<f4"), want,
                                           rtol=1e-6)
            # Over a socket the frame is the leaf's own memory: no copy needed, same scores.
            header, scores = c.score("scribble@1", np.frombuffer(msg, dtype=np.uint8), rows)
            assert header["ok"], header
            np.testing.assert_allclose(scores, want, rtol=1e-6)
        assert bytes(ring.slot(slot)[:len(msg)]) == msg   # the root's memory as it wrote it
    finally:
        ring.close()
    assert leaf.returncode is None, leaf.log()
    assert ping(leaf.endpoint, timeout=5)["ok"]
    assert "writes to its inputs" in leaf.log()
    assert os.listdir(shm_dir) == []
