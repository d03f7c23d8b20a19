"""Shared fixtures: a real Redis and fakeredis side by side, each test under its own key prefix.

Real services come from ``FLASHSTOCK_TEST_REDIS_URL`` (default the local Redis)
and ``FLASHSTOCK_TEST_PG_ADMIN_URL``. When a server is unreachable its tests
are skipped, unless ``FLASHSTOCK_TEST_REQUIRE_SERVICES=1`` (CI sets it), when
they fail instead.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import fakeredis
import pytest
import redis.asyncio as aredis
from support import FIGURES, REDIS_URL, need_redis, unique_prefix

from flashstock.engine import Engine
from flashstock.settings import Settings

pytest_plugins = ["conftest_ledger"]


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if FIGURES:
        terminalreporter.section("figures")
        for line in FIGURES:
            terminalreporter.write_line(line)


@pytest.fixture
def settings() -> Settings:
    return Settings(key_prefix=unique_prefix(), redis_url=REDIS_URL, database_url="sqlite://")


async def _drop_prefix(client: aredis.Redis, prefix: str) -> None:
    async for key in client.scan_iter(match=f"{prefix}:*", count=1000):
        await client.delete(key)


@pytest.fixture(params=[pytest.param("redis", marks=pytest.mark.redis), pytest.param("fakeredis")])
async def aclient(
    request: pytest.FixtureRequest, settings: Settings
) -> AsyncIterator[aredis.Redis]:
    """An async Redis client: the real server, then fakeredis (same suite on both)."""
    if request.param == "redis":
        need_redis()
        client = aredis.Redis.from_url(REDIS_URL, max_connections=64)
    else:
        client = fakeredis.FakeAsyncRedis()
    yield client
    await _drop_prefix(client, settings.key_prefix)
    await client.aclose()


@pytest.fixture
async def real_aclient(settings: Settings) -> AsyncIterator[aredis.Redis]:
    """The real Redis only: for tests whose point is real concurrency or real Lua."""
    need_redis()
    client = aredis.Redis.from_url(REDIS_URL, max_connections=256)
    yield client
    await _drop_prefix(client, settings.key_prefix)
    await client.aclose()


@pytest.fixture
def engine(aclient: aredis.Redis, settings: Settings) -> Engine:
    return Engine(aclient, settings)


@pytest.fixture
def real_engine(real_aclient: aredis.Redis, settings: Settings) -> Engine:
    return Engine(real_aclient, settings)
