"""A shared-memory descriptor naming something that is not a segment file gets
an error reply, and the leaf keeps serving.

The segment directory is a private one (``TRIMMER_SHM_DIR``) where the test
plants a directory and a FIFO under trimmer segment names; pid 1 owns them by
name, so the leaf's start-up reap leaves them alone.
"""
from __future__ import annotations

import os

import pytest

from tests.support.procs import Client, ping

pytestmark = pytest.mark.slow

BASE = {"type": "score", "model": "ctr@3", "rows": 4, "compression": "none"}


def test_descriptor_naming_a_directory_or_fifo_is_refused(process_runner, repo, shm_dir):
    leaf = process_runner.leaf(repo.root, models=["ctr@3"], name="shm-faults")
    directory = shm_dir / "trimmer-1-dir-00000000"
    directory.mkdir()
    fifo = shm_dir / "trimmer-1-fifo-00000000"
    os.mkfifo(fifo)
    with Client(leaf.endpoint) as c:
        for path in (directory, fifo):
            desc = {"segment": path.name, "size": os.stat(path).st_size, "offset": 0,
                    "nbytes": 0, "slot": 0}
            header, frames = c.request({**BASE, "shm": desc}, timeout=10)
            assert not header["ok"] and header["error"]["kind"] == "bad_request", header
            assert path.name in header["error"]["message"], header
            assert frames == []
    assert leaf.returncode is None
    assert ping(leaf.endpoint, timeout=5)["ok"]


SECRET = bytes(range(0x41, 0x41 + 26)) * 2 + b"0123456789ab"   # 64 bytes, every 4-gram unique


def quotes_secret(text: str) -> bool:
    """Whether ``text`` repeats any 4 consecutive bytes of SECRET, as bytes or repr."""
    grams = {SECRET[i:i + 4] for i in range(len(SECRET) - 3)}
    return any(g.decode() in text or repr(g)[2:-1] in text for g in grams)


def descriptor(path, offset=0, nbytes=None) -> dict:
    size = os.stat(path).st_size
    return {"segment": os.path.basename(path), "size": size, "offset": offset,
            "nbytes": size - offset if nbytes is None else nbytes, "slot": 0}


def refused(leaf, desc, kind="bad_request") -> str:
    with Client(leaf.endpoint) as c:
        header, frames = c.request({**BASE, "shm": desc}, timeout=10)
    assert not header["ok"] and header["error"]["kind"] == kind, header
    assert frames == []
    return header["error"]["message"]


def test_a_symlink_planted_under_a_segment_name_is_never_followed(process_runner, repo, shm_dir,
                                                                  tmp_path):
    """The attack: a symlink in the (world-writable) segment directory pointing
    at a file the leaf's user may read. The leaf refuses it without opening it,
    and no reply carries a byte of the file."""
    secret = tmp_path / "secret"
    secret.write_bytes(SECRET)
    secret.chmod(0o600)
    link = shm_dir / "trimmer-1-link-00000000"
    link.symlink_to(secret)
    leaf = process_runner.leaf(repo.root, models=["ctr@3"], name="shm-symlink")
    messages = [refused(leaf, descriptor(link, offset)) for offset in range(0, 64, 4)]
    assert all("symbolic link" in m for m in messages), messages
    assert not any(quotes_secret(m) for m in messages), messages
    assert leaf.returncode is None


def test_segments_not_owned_by_the_leafs_user_or_writable_by_others_are_refused(
        process_runner, repo, shm_dir):
    leaf = process_runner.leaf(repo.root, models=["ctr@3"], name="shm-owner")
    shared = shm_dir / "trimmer-1-shared-00000000"
    shared.write_bytes(SECRET)
    shared.chmod(0o666)
    message = refused(leaf, descriptor(shared))
    assert "writable by group or others" in message and not quotes_secret(message), message
    if os.geteuid() == 0:   # only root can give a file away
        foreign = shm_dir / "trimmer-1-foreign-00000000"
        foreign.write_bytes(SECRET)
        foreign.chmod(0o644)
        os.chown(foreign, 65534, 65534)
        message = refused(leaf, descriptor(foreign))
        assert "owned by uid 65534" in message and not quotes_secret(message), message
    assert ping(leaf.endpoint, timeout=5)["ok"]


def test_a_decode_error_never_quotes_the_segment(process_runner, repo, shm_dir):
    """A segment of ours that holds no batch: decode_error, without its bytes."""
    leaf = process_runner.leaf(repo.root, models=["ctr@3"], name="shm-decode")
    junk = shm_dir / "trimmer-1-junk-00000000"
    junk.write_bytes(SECRET * 4)
    junk.chmod(0o600)
    messages = [refused(leaf, descriptor(junk, offset, 64), kind="decode_error")
                for offset in range(0, 64, 4)]
    assert not any(quotes_secret(m) for m in messages), messages


def batch_in_ring(directory, rng):
    """A ring in ``directory`` holding one valid ctr@3 batch: (ring, descriptor)."""
    from _trim.transport.shm import SlotRing
    from tests.support.models import encode_columns, random_columns

    from .conftest import CTR_INPUTS
    msg = encode_columns(CTR_INPUTS, random_columns(CTR_INPUTS, 4, rng), 4)
    ring = SlotRing("test", 1 << 16, 2, directory=directory)
    slot = ring.acquire()
    ring.slot(slot)[:len(msg)] = msg.tobytes()
    return ring, ring.descriptor(slot, len(msg))


def test_shm_descriptors_are_refused_on_tcp(process_runner, repo, shm_dir, rng):
    """A tcp peer is never on this node: a descriptor from one names nothing of its own."""
    tcp = process_runner.endpoint("shm-tcp", "tcp")
    leaf = process_runner.leaf(repo.root, models=["ctr@3"], name="shm-tcp",
                               args=["--bind", tcp])
    ring, desc = batch_in_ring(shm_dir, rng)
    try:
        with Client(leaf.endpoint) as c:   # ipc: fine
            header, _ = c.request({**BASE, "shm": desc}, timeout=10)
            assert header["ok"], header
        with Client(tcp) as c:
            header, _ = c.request({**BASE, "shm": desc}, timeout=10)
        assert header["error"]["kind"] == "bad_request", header
        assert "ipc" in header["error"]["message"], header
    finally:
        ring.close()


def test_a_segment_truncated_after_it_was_mapped_does_not_kill_the_leaf(process_runner, repo,
                                                                          shm_dir, rng):
    leaf = process_runner.leaf(repo.root, models=["ctr@3"], name="shm-truncate")
    ring, desc = batch_in_ring(shm_dir, rng)
    try:
        with Client(leaf.endpoint) as c:
            header, _ = c.request({**BASE, "shm": desc}, timeout=10)
            assert header["ok"], header          # the leaf has it mapped now
            os.truncate(ring.path, 0)
            header, _ = c.request({**BASE, "shm": desc}, timeout=10)
        assert header["error"]["kind"] == "bad_request", header
        assert "0 bytes" in header["error"]["message"], header
    finally:
        ring.close()
    assert leaf.returncode is None, leaf.log()
    assert ping(leaf.endpoint, timeout=5)["ok"]
