"""Decoded batches to model inputs, in-process: zero copy on CPU, the staged
(one host-to-device copy) path, merging, and the CUDA path when a GPU exists."""
import numpy as np
import pytest
import torch

import _trim
from _trim.transport.protocol import ProtocolError
from leafproc.input_check import check, synthetic_message
from leafproc.tensors import HostTensors, Part, StagedTensors, merge_key
from tests.support.models import encode_columns, random_columns, spec

from .conftest import CTR_INPUTS, ENG_INPUTS

# TorchScript is what leaves serve; its deprecation notice is not this suite's concern.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")


def part(inputs, rows, rng, columns=None):
    cols = columns or random_columns(inputs, rows, rng)
    buf = bytearray(encode_columns(inputs, cols, rows).tobytes())  # a writable buffer, like a zmq frame
    decoded = _trim.decode(buf)
    return Part(decoded, np.frombuffer(buf, np.uint8, count=decoded.nbytes), rows), cols


def expected_features(inputs, cols, rows):
    out = {}
    for s in inputs:
        c = cols[s.name]
        if s.ragged:
            out[s.name + ".values"], out[s.name + ".offsets"] = c
        else:
            out[s.name] = np.broadcast_to(c, (rows,) + c.shape[1:]) if s.per_request else c
    return out


def assert_features(got, want):
    assert set(got) == set(want)
    for name, arr in want.items():
        t = got[name].cpu()
        assert t.dtype == torch.from_numpy(np.ascontiguousarray(arr)).dtype, name
        np.testing.assert_array_equal(t.numpy(), arr, err_msg=name)


@pytest.mark.parametrize("builder", [HostTensors(), StagedTensors("cpu")], ids=["host", "staged"])
def test_single_request_features(builder, rng):
    p, cols = part(CTR_INPUTS, 6, rng)
    feats = builder.build([p], CTR_INPUTS)
    assert_features(feats, expected_features(CTR_INPUTS, cols, 6))
    assert feats["user_emb"].stride(0) == 0  # broadcast as a view, not materialised


def test_host_tensors_alias_the_received_buffer(rng):
    p, _ = part(CTR_INPUTS, 6, rng)
    start, end = p.raw.ctypes.data, p.raw.ctypes.data + p.raw.nbytes
    for name, t in HostTensors().build([p], CTR_INPUTS).items():
        if t.numel():
            assert start <= t.data_ptr() < end, f"{name} was copied"


@pytest.mark.parametrize("builder", [HostTensors(), StagedTensors("cpu")], ids=["host", "staged"])
def test_merged_requests_concatenate_rows_and_rebase_offsets(builder, rng):
    parts = [part(ENG_INPUTS, rows, rng) for rows in (3, 1, 5)]
    feats = builder.build([p for p, _ in parts], ENG_INPUTS)
    want = {}
    for name in ("pin_ctr", "user_emb"):
        want[name] = np.concatenate([expected_features(ENG_INPUTS, c, p.rows)[name]
                                     for p, c in parts])
    want["pin_tags.values"] = np.concatenate([c["pin_tags"][0] for _, c in parts])
    lengths = np.concatenate([np.diff(c["pin_tags"][1]) for _, c in parts])
    want["pin_tags.offsets"] = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    assert_features(feats, want)


def test_merge_key_separates_per_request_ragged_lists(rng):
    a, cols = part(CTR_INPUTS, 4, rng)
    b, _ = part(CTR_INPUTS, 2, rng, columns=random_columns(CTR_INPUTS, 2, rng) | {
        "user_recent": cols["user_recent"]})
    c, _ = part(CTR_INPUTS, 2, rng, columns=random_columns(CTR_INPUTS, 2, rng) | {
        "user_recent": (np.array([1, 2, 3, 4, 5], np.int64), np.array([0, 5], np.int64))})
    assert merge_key(a.decoded, CTR_INPUTS) == merge_key(b.decoded, CTR_INPUTS)
    assert merge_key(a.decoded, CTR_INPUTS) != merge_key(c.decoded, CTR_INPUTS)
    assert merge_key(a.decoded, ENG_INPUTS) == ()


def test_check_accepts_dense_per_request_either_way_and_lists_all_problems(rng):
    flipped = [spec("pin_ctr"), spec("user_emb", shape=(4,)), spec("pin_tags", "int64", ragged=True)]
    p, _ = part(flipped, 3, rng)
    check(p.decoded, ENG_INPUTS, 3)  # a per-row user_emb is as good as a per-request one
    wrong = [spec("pin_ctr"), spec("user_emb", shape=(4,), per_request=True),
             spec("pin_tags", "int64", ragged=True, per_request=True)]
    p, _ = part(wrong, 3, rng)
    with pytest.raises(ProtocolError) as e:
        check(p.decoded, ENG_INPUTS, 3)
    assert e.value.kind == "signature_mismatch" and e.value.details["mismatched"] == ["pin_tags"]
    with pytest.raises(ProtocolError) as e:
        check(p.decoded, ENG_INPUTS, 4)
    assert e.value.kind == "bad_request"


def test_synthetic_message_satisfies_its_signature():
    msg = synthetic_message(CTR_INPUTS, 8)
    check(_trim.decode(msg), CTR_INPUTS, 8)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_staged_path_one_copy_matches_host(rng):
    builder = StagedTensors("cuda")
    parts = [part(CTR_INPUTS, rows, rng) for rows in (5, 5)]
    # Requests merged on the device share one staging copy; per-request ragged
    # lists must match to merge, so give both the same user list.
    cols0 = parts[0][1]
    parts[1] = part(CTR_INPUTS, 5, rng, columns=random_columns(CTR_INPUTS, 5, rng) | {
        "user_recent": cols0["user_recent"]})
    for group in ([parts[0][0]], [p for p, _ in parts]):
        feats = builder.build(group, CTR_INPUTS)
        host = HostTensors().build(group, CTR_INPUTS)
        assert all(t.device.type == "cuda" for t in feats.values())
        assert builder._staging.is_pinned()
        for name in host:
            torch.testing.assert_close(feats[name].cpu(), host[name], rtol=0, atol=0)
    assert feats["pin_ctr"].is_contiguous()
