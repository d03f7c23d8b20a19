"""Service discovery for the tests: where the real Redis and PostgreSQL are, and whether to insist."""

from __future__ import annotations

import os
import uuid

import pytest
import redis

REDIS_URL = os.environ.get("FLASHSTOCK_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
REQUIRE_SERVICES = os.environ.get("FLASHSTOCK_TEST_REQUIRE_SERVICES") == "1"


def _redis_up() -> bool:
    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1).ping()
    except redis.RedisError:
        return False
    return True


REDIS_UP = _redis_up()

# Figures a test measured, printed in the run's summary ("figures"): what the docs quote.
FIGURES: list[str] = []


def need_redis() -> None:
    if not REDIS_UP:
        if REQUIRE_SERVICES:
            pytest.fail(f"Redis is not reachable at {REDIS_URL}")
        pytest.skip(f"Redis is not reachable at {REDIS_URL}")


def unique_prefix() -> str:
    return "fst" + uuid.uuid4().hex[:10]
