"""The multiplexed script connection: many calls in flight on one socket, each answered its own
reply, errors typed as redis-py types them, and a lost connection never loses a call."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aredis
from redis.exceptions import NoScriptError, ResponseError
from support import REDIS_URL, need_redis

from flashstock.engine import Engine
from flashstock.errors import InsufficientStock
from flashstock.redis_client import Multiplexed, multiplexed

pytestmark = pytest.mark.redis

ECHO = "return {tonumber(ARGV[1]), KEYS[1]}"


@pytest.fixture
async def mux():
    need_redis()
    client = aredis.Redis.from_url(REDIS_URL)
    m = multiplexed(client, REDIS_URL, "test")
    assert isinstance(m, Multiplexed)
    yield m
    await m.aclose()


async def test_every_call_gets_its_own_reply(mux):
    sha = await mux.script_load(ECHO)
    got = await asyncio.gather(*(mux.evalsha(sha, 1, f"k{i}", i) for i in range(2000)))
    assert got == [[i, f"k{i}".encode()] for i in range(2000)]


async def test_errors_are_typed_like_redis_py(mux):
    with pytest.raises(NoScriptError):
        await mux.evalsha("0" * 40, 0)
    with pytest.raises(ResponseError):
        await mux.eval("return redis.call('INCR', KEYS[1], 'x')", 1, "k")
    assert await mux.eval("return 7", 0) == 7  # the connection is still usable


async def test_other_commands_go_to_the_wrapped_client(mux):
    assert await mux.ping() is True
    async with mux.pipeline(transaction=False) as pipe:
        pipe.exists("no-such-key-at-all")
        assert await pipe.execute() == [0]


async def test_a_killed_connection_loses_no_call(mux):
    sha = await mux.script_load(ECHO)
    assert await mux.evalsha(sha, 1, "k", 1) == [1, b"k"]
    admin = aredis.Redis.from_url(REDIS_URL)
    try:
        calls = [mux.evalsha(sha, 1, "k", i) for i in range(200)]
        killer = admin.execute_command("CLIENT", "KILL", "ID", await mux.connection_id())
        got = await asyncio.gather(*calls, killer)
    finally:
        await admin.aclose()
    assert got[:200] == [[i, b"k"] for i in range(200)]
    assert await mux.evalsha(sha, 1, "k", 5) == [5, b"k"]


async def test_engine_on_the_multiplexed_connection(mux, settings):
    engine = Engine(mux, settings)
    try:
        await engine.set_on_hand("M", "default", 3)
        got = await asyncio.gather(
            *(engine.reserve([("M", 1, None)]) for _ in range(10)), return_exceptions=True
        )
        assert sum(not isinstance(g, Exception) for g in got) == 3
        assert all(isinstance(g, InsufficientStock) for g in got if isinstance(g, Exception))
    finally:
        async for key in mux.scan_iter(match=f"{settings.key_prefix}:*"):
            await mux.delete(key)


def test_fakeredis_and_tls_stay_on_the_plain_client():
    import fakeredis

    fake = fakeredis.FakeAsyncRedis()
    assert multiplexed(fake, "fakeredis://", "t") is fake
    plain = aredis.Redis.from_url("rediss://127.0.0.1:1/0")
    assert multiplexed(plain, "rediss://127.0.0.1:1/0", "t") is plain
