"""A CUDA leaf registers each shared-memory segment as pinned memory once and
copies batches to the device straight from their slots."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch

import _trim
from _trim import Batch, Layout, compile_plan
from _trim.transport.shm import SlotRing
from leafproc.inbox import ShmInbox
from leafproc.tensors import Part, builder_for
from tests.support.models import spec

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def test_slots_are_pinned_once_and_dma_to_the_device(tmp_path):
    inputs = [spec("x"), spec("v", shape=(4,)), spec("u", shape=(4,), per_request=True)]
    layout = Layout(s.column_spec() for s in inputs)
    rows = 16
    arrays = {"x": np.arange(rows, dtype="f4"), "v": np.ones((rows, 4), "f4"),
              "u": np.full((1, 4), 2, "f4")}
    batch = Batch.from_arrays(layout, arrays, rows)
    plan = compile_plan(layout, layout.names)
    inbox = ShmInbox(1 << 20, "cuda", directory=tmp_path, reap=False)
    builder = builder_for(torch.device("cuda"))
    with SlotRing("gpu", 1 << 16, 2, tmp_path) as ring:
        for slot in (ring.acquire(), ring.acquire()):
            n = _trim.encode_into(plan, batch, ring.slot(slot))
            header = {"shm": ring.descriptor(slot, n)}
            buf, pinned = inbox.resolve(header, [b"header"], "none", os.geteuid())
            assert pinned and list(inbox.pinned) == [ring.name]
            decoded = _trim.decode(buf)
            part = Part(decoded, np.frombuffer(buf, np.uint8, count=decoded.nbytes), rows, pinned)
            feats = builder.build([part], inputs)
            assert feats["x"].device.type == "cuda"
            assert torch.equal(feats["x"].cpu(), torch.from_numpy(arrays["x"]))
            assert torch.equal(feats["u"].cpu(), torch.full((rows, 4), 2.0))
            torch.cuda.synchronize()
            del feats, part, decoded, buf
        inbox.close()
        assert not inbox.pinned
