"""signatures/runtime/stop_signals.py in this process: what each signal does, that
only one ever raises, that cleanup runs to its end, and that a signal the
kernel hands another thread still wakes a poll on `wakeup`."""
from __future__ import annotations

import select
import signal
import subprocess
import sys
import threading

import pytest

from signatures.runtime.stop_signals import STOP_SIGNALS, DeferredStop, Stopped, StopSignals
from tests.support.procs import REPO_ROOT


def send(sig: int) -> None:
    """``sig`` to this process; its handler runs before this returns (main thread)."""
    signal.pthread_kill(threading.main_thread().ident, sig)


def test_every_stop_signal_is_handled_and_the_old_handlers_come_back():
    before = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
    with StopSignals(raise_on=0) as stop:
        for sig in STOP_SIGNALS:
            assert signal.getsignal(sig) == stop._handle
            send(sig)
        assert stop.received == list(STOP_SIGNALS) and stop.first == "SIGINT"
    assert {sig: signal.getsignal(sig) for sig in STOP_SIGNALS} == before


def test_an_ignored_signal_is_handled_while_in_use():
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with StopSignals(raise_on=1) as stop, pytest.raises(Stopped) as raised:
            send(signal.SIGINT)
        assert raised.value.name == "SIGINT" and stop.requested
        assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN  # as it was
    finally:
        signal.signal(signal.SIGINT, previous)


def test_only_the_chosen_signal_raises_and_only_once():
    notes = []
    with StopSignals(raise_on=2, on_signal=lambda sig, n: notes.append((sig, n))) as stop:
        send(signal.SIGTERM)  # the first: recorded only
        with pytest.raises(Stopped):
            send(signal.SIGINT)
        send(signal.SIGHUP)
        send(signal.SIGTERM)  # later ones: recorded only
    assert notes == [(signal.SIGTERM, 1), (signal.SIGINT, 2), (signal.SIGHUP, 3), (signal.SIGTERM, 4)]
    assert stop.first == "SIGTERM"


def test_a_signal_handled_inside_the_first_ones_notice_does_not_cancel_its_stop():
    """Two stop signals at once (`timeout` passes on the one it got, say):
    Python may run the second's handler inside the first's notice, and the
    first must still raise (it did not: both saw two signals received, and
    a demo kept running)."""
    notes = []

    def notice(sig, n):
        if n == 1:
            send(signal.SIGTERM)   # handled here, before this notice returns
        notes.append(n)

    with StopSignals(raise_on=1, on_signal=notice) as stop, pytest.raises(Stopped) as raised:
        send(signal.SIGINT)
    assert raised.value.name == "SIGINT" and sorted(notes) == [1, 2]
    assert stop.received == [signal.SIGINT, signal.SIGTERM] and stop.first == "SIGINT"


def test_finish_runs_a_step_to_its_end_when_the_signal_lands_inside_it():
    calls = []

    def step():
        calls.append("start")
        if len(calls) == 1:
            send(signal.SIGTERM)  # the one Stopped, mid-step
        calls.append("end")

    with StopSignals(raise_on=1) as stop, pytest.raises(Stopped):
        stop.finish(step)
    assert calls == ["start", "start", "end"]


def test_a_signal_another_thread_takes_still_wakes_a_poll_on_wakeup():
    with StopSignals(raise_on=0) as stop:
        assert select.select([stop.wakeup], [], [], 0)[0] == []
        ready = threading.Event()
        done = threading.Event()
        other = threading.Thread(target=lambda: (ready.set(), done.wait(10)))
        other.start()
        ready.wait(10)
        signal.pthread_kill(other.ident, signal.SIGTERM)  # handled in C by that thread
        try:
            assert select.select([stop.wakeup], [], [], 10)[0] == [stop.wakeup]
        finally:
            done.set()
            other.join()
        stop.drain_wakeup()
        assert select.select([stop.wakeup], [], [], 0)[0] == []
    assert stop.received == [signal.SIGTERM]


def test_a_deferred_stop_is_handed_to_the_server_once_it_exists():
    previous = {sig: signal.getsignal(sig) for sig in DeferredStop.SIGNALS}
    try:
        starting = DeferredStop().install()
        send(signal.SIGTERM)
        assert starting.pending == signal.SIGTERM
        stops = []
        starting.hand_to(lambda: stops.append("stop"))
        assert stops == ["stop"]
        send(signal.SIGINT)  # from now on straight to the server
        assert stops == ["stop", "stop"]
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def test_a_second_signal_while_starting_ends_the_process_as_the_default_would():
    code = ("import os, signal, time\n"
            "from signatures.runtime.stop_signals import DeferredStop\n"
            "starting = DeferredStop().install()\n"
            "os.kill(os.getpid(), signal.SIGTERM)\n"
            "print('held', flush=True)\n"
            "os.kill(os.getpid(), signal.SIGINT)\n"
            "time.sleep(5)\n"
            "print('still here', flush=True)\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=30)
    assert done.stdout == "held\n"
    assert done.returncode == -signal.SIGINT, done.stderr


def test_stopped_is_not_an_exception_that_except_exception_swallows():
    assert not issubclass(Stopped, Exception)


def test_a_notice_from_a_handler_survives_a_closed_stderr():
    code = ("import os\nfrom signatures.runtime.stop_signals import say\n"
            "os.close(2)\nsay('nobody reads this')\nprint('fine')\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=30)
    assert (done.returncode, done.stdout) == (0, "fine\n")
