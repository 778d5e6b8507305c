from __future__ import annotations

import pytest

from tests.root.conftest import world  # noqa: F401  (the root tests' serving world)

from .redis_server import RedisServer


@pytest.fixture
def redis_server(tmp_path_factory):
    with RedisServer(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture(scope="module")
def module_redis_server(tmp_path_factory):
    with RedisServer(tmp_path_factory.mktemp("redis")) as server:
        yield server
