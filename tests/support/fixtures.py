"""Pytest fixtures; import them into a conftest:
``from tests.support.fixtures import process_runner  # noqa: F401``."""
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
