"""Pytest fixtures, registered for every test by tests/conftest.py.

`process_runner` stops its processes after each test; `module_process_runner`
after the module, for processes that many tests share. `format_repo`: one
model exported in every format, once per session."""
from __future__ import annotations

import pytest

from .procs import ProcessRunner


@pytest.fixture
def process_runner(tmp_path):
    runner = ProcessRunner(tmp_path)
    try:
        yield runner
    finally:
        runner.close()


@pytest.fixture(scope="module")
def module_process_runner(tmp_path_factory, request):
    runner = ProcessRunner(tmp_path_factory.mktemp(request.module.__name__.rsplit(".", 1)[-1]))
    try:
        yield runner
    finally:
        runner.close()


@pytest.fixture(scope="session")
def format_repo(tmp_path_factory):
    """One model in every format (tests/support/formats.py), exported once per session."""
    from .formats import build_format_repo
    return build_format_repo(tmp_path_factory.mktemp("formats"))


@pytest.fixture(scope="session")
def zk_server(tmp_path_factory):
    """A ZooKeeper server for the session; each test takes a chroot of its own
    (``zk_server.address()``). Tests that stop or kill a server start their own."""
    from .zookeeper import ZooKeeperServer
    with ZooKeeperServer(tmp_path_factory.mktemp("zookeeper")) as server:
        yield server


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A failed test's report carries the last lines of each process it
    started: a failure in a shared CI run is read from the log alone."""
    outcome = yield
    report = outcome.get_result()
    if report.when != "call" or not report.failed:
        return
    for fixture in ("process_runner", "module_process_runner"):
        runner = item.funcargs.get(fixture)
        for proc in getattr(runner, "procs", ()):
            try:
                report.sections.append((f"log of {proc.name} (pid {proc.pid})", proc.log(3000)))
            except OSError as exc:
                report.sections.append((f"log of {proc.name}", f"unreadable: {exc}"))
