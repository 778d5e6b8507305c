"""Shared-memory slot rings: bounds, exhaustion, stale-segment cleanup."""
import signal
import subprocess
import sys

import numpy as np
import pytest

import _trim
from _trim import Batch, ColumnSpec, Layout, compile_plan
from _trim.errors import ShmUnavailable
from _trim.transport.shm import SegmentReader, SlotRing, reap_stale_segments


@pytest.fixture
def shm_dir(tmp_path):
    return tmp_path  # a private directory: these tests never touch the real /dev/shm


def test_encode_into_a_slot_and_decode_in_place(shm_dir):
    layout = Layout([ColumnSpec("a", "float32", (4,)), ColumnSpec("b", "int64")])
    batch = Batch.from_arrays(layout, {"a": np.ones((3, 4), "f4"), "b": np.arange(3)}, 3)
    plan = compile_plan(layout, ["b"])
    reader = SegmentReader(shm_dir)
    with SlotRing("leaf-0", 4096, 4, shm_dir) as ring:
        slot = ring.acquire()
        n = _trim.encode_into(plan, batch, ring.slot(slot))
        decoded = _trim.decode(reader.view(ring.descriptor(slot, n)))
        assert decoded["b"].tolist() == [0, 1, 2]
        del decoded
        reader.close()
    assert list(shm_dir.iterdir()) == []


def test_slots_run_out_and_come_back(shm_dir):
    with SlotRing("x", 64, 2, shm_dir) as ring:
        a, b = ring.acquire(), ring.acquire()
        assert {a, b} == {0, 1}
        assert ring.acquire(timeout=0.01) is None
        ring.release(a)
        ring.release(b)
        assert ring.acquire() == b   # the slot freed last is the warmest: it goes first
        assert ring.acquire() == a


def test_reader_rejects_descriptors_outside_the_segment(shm_dir):
    reader = SegmentReader(shm_dir)
    with SlotRing("x", 64, 2, shm_dir) as ring:
        good = ring.descriptor(1, 64)
        assert len(reader.view(good)) == 64
        for bad, message in [({**good, "offset": 100}, "outside segment"),
                             ({**good, "segment": "../../etc/passwd"}, "not a trimmer segment"),
                             ({**good, "size": 4096}, "descriptor says 4096"),
                             ({**good, "nbytes": -1}, "non-negative integer"),
                             ({"segment": good["segment"]}, "needs segment, size, offset and nbytes")]:
            with pytest.raises(ValueError, match=message):
                reader.view(bad)
        reader.close()


def test_ring_too_big_for_the_directory_is_a_clear_error(shm_dir):
    with pytest.raises(ShmUnavailable, match="free, the ring needs"):
        SlotRing("huge", 1 << 40, 1024, shm_dir)


def test_segments_of_a_killed_process_are_reaped(shm_dir):
    code = ("import sys, time; from _trim.transport.shm import SlotRing; "
            f"r = SlotRing('victim', 4096, 2, {str(shm_dir)!r}); print(r.name, flush=True); time.sleep(60)")
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        name = child.stdout.readline().strip()
        assert (shm_dir / name).exists()
        assert reap_stale_segments(shm_dir) == []  # alive: left alone
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
        child.stdout.close()
    assert reap_stale_segments(shm_dir) == [name]
    assert not (shm_dir / name).exists()


def test_reader_opens_only_regular_files_of_the_writer_and_rechecks_their_size(shm_dir):
    import os

    from _trim.transport.shm import ipc_peer_uid
    reader = SegmentReader(shm_dir)
    with SlotRing("x", 64, 2, shm_dir) as ring:
        good = ring.descriptor(0, 64)
        link = shm_dir / "trimmer-1-link-00000000"
        link.symlink_to(ring.path)
        with pytest.raises(ValueError, match="symbolic link"):
            reader.view({**good, "segment": link.name})
        with pytest.raises(ValueError, match=f"owned by uid {os.geteuid()}, not by its writer's uid"):
            reader.view(good, owner=os.geteuid() + 1)
        assert len(reader.view(good)) == 64
        os.truncate(ring.path, 0)   # mapped here: reading it now would SIGBUS
        with pytest.raises(ValueError, match="is now 0 bytes, 128 when mapped"):
            reader.view(good)
        with pytest.raises(ValueError, match="is 0 bytes, descriptor says 128"):
            reader.view(good)
    reader.close()
    assert ipc_peer_uid("localhost:1000:1000:4242") == 1000
    for address in (None, "", "127.0.0.1", "::1", "2001:db8::1000:1000:99", "localhost:x:1:2"):
        assert ipc_peer_uid(address) is None, address


def test_a_fresh_ring_is_mapped_up_front_so_no_request_pays_first_touch_faults(shm_dir):
    """A write into a slot nobody wrote before would otherwise take one page
    fault per 4 KiB page (~3 ms for 8 MiB on tmpfs): the ring maps its pages
    when it is made, so the first requests cost what later ones do."""
    import resource

    nbytes = 4 << 20
    src = np.ones(nbytes, np.uint8)
    with SlotRing("x", nbytes, 2, shm_dir) as ring:
        slot = np.frombuffer(ring.slot(ring.acquire()), np.uint8)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        slot[:] = src
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
        del slot
    assert faults < nbytes // 4096 // 10, f"{faults} page faults writing a fresh {nbytes}-byte slot"


def test_a_message_larger_than_a_slot_takes_a_run_of_contiguous_slots(shm_dir):
    """The run is held and freed by its first slot; the descriptor names its
    start and the message's size; the reader sees one contiguous range."""
    reader = SegmentReader(shm_dir)
    with SlotRing("x", 64, 8, shm_dir) as ring:
        assert ring.slots_for(1) == 1 and ring.slots_for(64) == 1 and ring.slots_for(65) == 2
        one = ring.acquire()
        run = ring.acquire(count=3)
        assert ring.held_slots == 4 and ring.free_slots == 4 and ring.run_length(run) == 3
        assert len(ring.slot(run)) == 3 * 64
        data = np.arange(150, dtype=np.uint8)
        np.frombuffer(ring.slot(run), np.uint8)[:150] = data
        desc = ring.descriptor(run, 150)
        assert desc["offset"] == run * 64 and desc["nbytes"] == 150 and desc["slot"] == run
        assert bytes(reader.view(desc)) == data.tobytes()
        with pytest.raises(ValueError, match="do not fit the 192 bytes"):
            ring.descriptor(run, 193)
        with pytest.raises(ValueError, match="does not start a held run"):
            ring.release(run + 1)   # a slot inside a run is not the run
        ring.release(run)
        assert ring.held_slots == 1 and ring.run_length(run) == 0
        with pytest.raises(ValueError, match="does not start a held run"):
            ring.release(run)        # freed twice
        ring.release(one)
        assert ring.free_slots == 8
        assert ring.acquire(count=9) is None                 # larger than the ring: never
        assert ring.acquire(timeout=0.01, count=9) is None
        assert ring.acquire(count=8) == 0                    # the whole ring is one run
        reader.close()


def test_runs_never_wrap_and_out_of_order_frees_merge_back(shm_dir):
    with SlotRing("x", 64, 8, shm_dir) as ring:
        runs = [ring.acquire(count=2) for _ in range(4)]
        assert sorted(runs) == [0, 2, 4, 6] and ring.acquire() is None
        ring.release(runs[runs.index(6)])      # free: slots 6-7 (the end of the segment)
        ring.release(runs[runs.index(0)])      # free: 0-1
        # 4 slots are free, but not contiguously: a run of 3 would have to wrap
        assert ring.free_slots == 4 and ring.acquire(count=3) is None
        ring.release(runs[runs.index(4)])      # 4-7 now contiguous
        assert ring.acquire(count=3) in (4, 5)
        ring.release(runs[runs.index(2)])


def test_the_smallest_fitting_gap_is_used_and_the_run_freed_last_comes_back(shm_dir):
    with SlotRing("x", 64, 10, shm_dir) as ring:
        a, b, c = ring.acquire(count=2), ring.acquire(count=1), ring.acquire(count=4)
        assert (a, b, c) == (0, 2, 3)   # an empty ring fills from its start
        ring.release(b)                 # gaps: [2] (1 slot) and [7..9] (3 slots)
        assert ring.acquire() == 2      # one slot goes into the 1-slot gap, not the big one
        ring.release(a)
        ring.release(c)
        assert ring.acquire(count=4) == 3   # the run freed last, exactly: warm pages
        assert ring.acquire(count=2) == 0


def test_a_run_is_reserved_on_first_use_only(shm_dir):
    """The segment is sparse: a slot costs memory once a run has used it."""
    import os
    slot = 1 << 20
    with SlotRing("x", slot, 64, shm_dir) as ring:
        assert ring.reserved_bytes == 0 and os.stat(ring.path).st_blocks == 0
        run = ring.acquire(count=3)
        assert ring.reserved_bytes == 3 * slot
        assert os.stat(ring.path).st_blocks * 512 >= 3 * slot
        ring.release(run)
        assert ring.acquire(count=3) == run and ring.reserved_bytes == 3 * slot   # reused
        assert os.stat(ring.path).st_size == 64 * slot
