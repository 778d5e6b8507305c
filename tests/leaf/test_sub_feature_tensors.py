"""A column sent as the signature's read becomes the declared tensor again,
on the host and through the staged (one host-to-device copy) path, merged
with a request that sent it whole; and the input check takes the read or
the whole feature and names any other read."""
import dataclasses

import numpy as np
import pytest
import torch

import _trim
from _trim import Batch, Layout
from _trim.reads import FeatureRead
from _trim.transport.protocol import ProtocolError
from leafproc.input_check import check
from leafproc.tensors import HostTensors, Part, StagedTensors
from tests.support.models import spec

READ = FeatureRead(((1, 3), (5, 8)), "bfloat16")
INPUTS = [dataclasses.replace(spec("emb", shape=(10,)), read=READ), spec("ctr"),
          dataclasses.replace(spec("user", shape=(4,), per_request=True),
                              read=FeatureRead(None, "float16"))]


def part(rows, rng, reads=None):
    layout = Layout(s.column_spec() for s in INPUTS)
    cols = {"emb": rng.standard_normal((rows, 10)).astype("f4"),
            "ctr": rng.standard_normal(rows).astype("f4"),
            "user": rng.standard_normal((1, 4)).astype("f4")}
    plan = _trim.compile_plan(layout, layout.names, reads)
    buf = bytearray(_trim.encode(plan, Batch.from_arrays(layout, cols, rows)).tobytes())
    decoded = _trim.decode(buf)
    return Part(decoded, np.frombuffer(buf, np.uint8, count=decoded.nbytes), rows), cols


def expected(cols, rows, narrowed: bool):
    emb = torch.from_numpy(cols["emb"])
    user = torch.from_numpy(cols["user"]).expand(rows, 4)
    if not narrowed:
        return {"emb": emb, "ctr": torch.from_numpy(cols["ctr"]), "user": user}
    out = torch.zeros(rows, 10)
    for a, b in READ.ranges:
        out[:, a:b] = emb[:, a:b].to(torch.bfloat16).float()
    return {"emb": out, "ctr": torch.from_numpy(cols["ctr"]), "user": user.half().float()}


@pytest.mark.parametrize("device", [
    None, "cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(),
                                                                reason="needs a CUDA device"))],
    ids=["host", "staged", "cuda"])
def test_reads_become_the_declared_tensors_merged_with_whole_ones(device):
    builder = HostTensors() if device is None else StagedTensors(torch.device(device))
    rng = np.random.default_rng(3)
    reads = {s.name: s.read for s in INPUTS if s.read is not None}
    fine, fine_cols = part(5, rng, reads)
    whole, whole_cols = part(3, rng)
    for d in (fine.decoded, whole.decoded):
        check(d, INPUTS, d.n_rows)
    got = builder.build([fine, whole], INPUTS)
    want = {k: torch.cat([a, b]) for (k, a), b in zip(
        expected(fine_cols, 5, True).items(), expected(whole_cols, 3, False).values())}
    for name, t in want.items():
        assert got[name].dtype == torch.float32 and tuple(got[name].shape) == tuple(t.shape)
        assert torch.equal(got[name].cpu().view(torch.int32), t.view(torch.int32)), name


def test_a_read_other_than_the_signatures_is_named():
    rng = np.random.default_rng(4)
    other, _ = part(2, rng, {"emb": FeatureRead(((0, 4),), "bfloat16")})
    with pytest.raises(ProtocolError, match="emb: .*sub-feature read mismatch") as exc:
        check(other.decoded, INPUTS, 2)
    assert exc.value.details["mismatched"] == ["emb"]
    plain = [dataclasses.replace(s, read=None) for s in INPUTS]
    fine, _ = part(2, rng, {s.name: s.read for s in INPUTS if s.read is not None})
    with pytest.raises(ProtocolError, match="sub-feature read mismatch"):
        check(fine.decoded, plain, 2)
