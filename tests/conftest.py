"""Shared fixtures: a real redis-server and the tiny config. Environments are real dm_control /
MuJoCo with headless rendering. Polling helpers: tests/support.py."""

from __future__ import annotations

import pytest

from diswm.config import Config
from diswm.presets import load_config
from replay_service.server import RedisServer


@pytest.fixture(scope="session")
def tiny_cfg() -> Config:
    return load_config(["tiny"])


@pytest.fixture
def redis_server(tmp_path):
    """A redis-server of this test's own (loopback, generated password, no persistence)."""
    with RedisServer(tmp_path / "redis", persistence="none") as server:
        yield server


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One redis-server for a test module's replay tests (AOF, fsync always); each test uses
    its own namespace."""
    srv = RedisServer(tmp_path_factory.mktemp("redis"), persistence="aof", fsync="always")
    srv.start()
    yield srv
    srv.stop()
