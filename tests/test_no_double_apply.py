"""A script that may have run is never sent again: a stalled Redis must not apply a change twice.

The client times out while Redis is still busy; the change is applied once when
Redis gets to it, and the caller is told it does not know (an error, not a
second try) so that it can retry with its idempotency id.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest
import redis
from redis_server import RedisServer

from flashstock.engine import Engine
from flashstock.redis_client import create_async, multiplexed
from flashstock.settings import Settings

pytestmark = [pytest.mark.redis, pytest.mark.slow]

# Keeps the server busy for 2 s (the multiplexed connection's watchdog ticks each second) (DEBUG SLEEP is disabled on Redis 7 by default).
BUSY_FOR_2_S = """
local s = redis.call('TIME')
while true do
  local n = redis.call('TIME')
  if (n[1] - s[1]) * 1000000 + (n[2] - s[2]) > 2000000 then return 1 end
end
"""


@pytest.fixture
def server(tmp_path: Path):  # type: ignore[no-untyped-def]
    s = RedisServer(tmp_path / "redis", appendfsync=None)
    s.start()
    yield s
    s.stop()


@pytest.mark.parametrize("pipelined", [False, True], ids=["pooled", "multiplexed"])
async def test_a_timed_out_adjustment_is_applied_once(server: RedisServer, pipelined: bool) -> None:
    settings = Settings(key_prefix="once", redis_url=server.url, database_url="sqlite://",
                        redis_timeout_seconds=0.4)  # fmt: skip
    client = create_async(server.url, "api", timeout=settings.redis_timeout_seconds)
    if pipelined:  # what the API uses
        client = multiplexed(client, server.url, "api", settings.redis_timeout_seconds)
    engine = Engine(client, settings)
    await engine.set_on_hand("A", "default", 10)
    await engine.adjust("A", "default", 1, "received")  # the script is now cached by SHA
    stall = threading.Thread(target=lambda: server.client().eval(BUSY_FOR_2_S, 0))
    stall.start()
    await asyncio.sleep(0.1)
    with pytest.raises((redis.TimeoutError, redis.ConnectionError)):
        await engine.adjust("A", "default", 1, "received")
    stall.join()
    await asyncio.sleep(0.2)
    level = (await engine.get_stock("A")).data["locations"][0]
    assert level["on_hand"] == 12  # applied once, when Redis got to it; never twice
    await client.aclose()
