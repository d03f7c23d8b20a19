"""Durability modes: strict answers only once Redis has the change on disk, or refuses to start."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aredis
from redis_server import RedisServer

from flashstock import durability
from flashstock.durability import Durability, DurabilityError, Persistence, method_for, prepare
from flashstock.engine import Engine
from flashstock.errors import Unavailable
from flashstock.scripts import Scripts
from flashstock.settings import Settings


@pytest.mark.parametrize(
    ("p", "method"),
    [
        (Persistence((7, 0, 15), True, "always"), "always"),
        (Persistence((7, 2, 4), True, "everysec"), "waitaof"),
        (Persistence((7, 2, 4), None, None), "waitaof"),
        (Persistence((7, 0, 15), True, "everysec"), None),
        (Persistence((7, 0, 15), None, None), None),
        (Persistence((7, 4, 0), False, "always"), None),
    ],
)
def test_which_redis_can_be_strict(p: Persistence, method: str | None) -> None:
    if method is None:
        with pytest.raises(DurabilityError):
            method_for(p)
    else:
        assert method_for(p) == method


@pytest.fixture(params=["always", "everysec"])
def server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RedisServer]:
    s = RedisServer(tmp_path / "redis", appendfsync=request.param)
    s.start()
    yield s
    s.stop()


@pytest.mark.redis
async def test_strict_needs_fsync_always_on_redis_without_waitaof(server: RedisServer) -> None:
    client = aredis.Redis.from_url(server.url)
    settings = Settings(key_prefix="fsd", redis_url=server.url, durability="strict")
    version = (await durability.inspect(client)).version
    if version >= (7, 2):
        pytest.skip("this Redis has WAITAOF")
    if server.appendfsync == "everysec":
        with pytest.raises(DurabilityError, match="appendfsync always"):
            await prepare(settings, client)
    else:
        e = Engine(client, settings)
        e.durable = await prepare(settings, client)
        assert e.durable is not None and e.durable.method == "always"
        await e.set_on_hand("A", "default", 3)
        assert (await e.reserve([("A", 1)], reservation_id="r")).created
        # Someone turns fsync down at run time: noticed at the next check, 503 until fixed.
        await client.config_set("appendfsync", "everysec")
        e.durable._checked = 0.0
        with pytest.raises(Unavailable):
            await e.reserve([("A", 1)], reservation_id="r2")
        assert (await e.get_stock("A")).data["total"]["reserved"] == 1  # reads never wait
    await client.aclose()


class _Pipe:
    def __init__(self, log: list[Any], acked: int) -> None:
        self.log, self.acked, self.cmds = log, acked, []

    async def __aenter__(self) -> _Pipe:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        return None

    def execute_command(self, *args: Any) -> None:
        self.cmds.append(args)

    async def execute(self, raise_on_error: bool = True) -> list[Any]:
        self.log.append([c[0] for c in self.cmds])
        return [[0, b"{}"], [self.acked, 0]]


class _Client:
    def __init__(self, acked: int) -> None:
        self.log: list[Any] = []
        self.acked = acked

    def pipeline(self, transaction: bool = True) -> _Pipe:
        return _Pipe(self.log, self.acked)


async def test_waitaof_goes_on_the_same_connection_as_the_script() -> None:
    client = _Client(acked=1)
    guard = Durability(Settings(durability="strict"), client)
    guard.method, guard._checked = "waitaof", 1e18
    assert await guard.call(None, Scripts(), "release", ["fs:{p0}:"], [1, "r"]) == [0, b"{}"]
    assert client.log == [["EVALSHA", "WAITAOF"]]
    guard.client = _Client(acked=0)  # not fsynced within the timeout
    with pytest.raises(Unavailable, match="not on disk yet"):
        await guard.call(None, Scripts(), "release", ["fs:{p0}:"], [1, "r"])
