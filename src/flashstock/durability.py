"""Durability modes: when the API may answer that a change is done (docs/durability.md).

* ``fast`` (default): as soon as the script has run in Redis. With AOF
  ``appendfsync everysec`` a crash of the Redis *machine* (power, kernel) can
  lose about the last second of acknowledged changes; a crash of the Redis
  *process* loses nothing, the written AOF is in the OS's cache.
* ``strict``: only once the change is on Redis's disk. Redis with
  ``appendfsync always`` fsyncs before it replies, so the reply itself is the
  proof; on Redis >= 7.2 with another fsync policy, each mutating script is
  followed on the same connection by ``WAITAOF 1 0 timeout``. Anything else
  (AOF off, Redis < 7.2 without ``always``, CONFIG unreadable on < 7.2) is
  refused at start. The configuration is checked again every
  ``RECHECK_S`` seconds, so a Redis restarted with another policy is noticed.

Read-only scripts (``get_stock``, ``get_reservation``, ``get_order``) never
wait, though they may reap expired holds: a reaping lost in a crash changes no
answer, the next read reaps again by the same clock.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from redis.exceptions import NoScriptError, ResponseError

from flashstock.errors import Unavailable
from flashstock.settings import Settings

log = logging.getLogger(__name__)

READ_ONLY = frozenset({"get_stock", "get_reservation", "get_order"})
RECHECK_S = 10.0


class DurabilityError(RuntimeError):
    """This Redis cannot give the guarantee the durability mode promises."""


@dataclass(frozen=True)
class Persistence:
    """What a Redis server says about its AOF."""

    version: tuple[int, ...]
    appendonly: bool | None  # None: CONFIG GET is not allowed here
    appendfsync: str | None

    @property
    def has_waitaof(self) -> bool:
        return self.version >= (7, 2)


def _s(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


async def inspect(client: Any) -> Persistence:
    info = await client.info("server")
    version = tuple(int(x) for x in _s(info["redis_version"]).split(".")[:3] if x.isdigit())
    try:
        cfg = {_s(k): _s(v) for k, v in (await client.config_get("append*")).items()}
    except ResponseError:  # CONFIG renamed or disabled (managed Redis)
        return Persistence(version, None, None)
    return Persistence(version, cfg.get("appendonly") == "yes", cfg.get("appendfsync"))


def method_for(p: Persistence) -> str:
    """``"always"`` (the reply is the proof) or ``"waitaof"``; DurabilityError otherwise."""
    if p.appendonly is False:
        raise DurabilityError("strict durability needs the AOF: appendonly yes")
    if p.appendfsync == "always":
        return "always"
    if p.has_waitaof:
        return "waitaof"
    if p.appendfsync is None:
        raise DurabilityError(
            "strict durability: cannot read appendfsync (CONFIG GET refused) and this Redis "
            f"({'.'.join(map(str, p.version))}) has no WAITAOF"
        )
    raise DurabilityError(
        f"strict durability needs appendfsync always on Redis "
        f"{'.'.join(map(str, p.version))} (no WAITAOF before 7.2); it is {p.appendfsync}"
    )


class Durability:
    """Strict mode's guard around mutating scripts (``Engine.durable``).

    Args:
        settings: ``durability_timeout_ms`` bounds each WAITAOF.
        client: a plain redis-py asyncio client, for the checks and the WAITAOF pipeline.
    """

    def __init__(self, settings: Settings, client: Any) -> None:
        self.timeout_ms = settings.durability_timeout_ms
        self.client = client
        self.method: str | None = None
        self._checked = 0.0

    async def check(self) -> str:
        """Read the server's AOF settings; raises DurabilityError when strict is impossible."""
        self.method = method_for(await inspect(self.client))
        self._checked = time.monotonic()
        return self.method

    async def _method(self) -> str:
        if self.method is None or time.monotonic() - self._checked > RECHECK_S:
            try:
                return await self.check()
            except DurabilityError as exc:
                self.method = None
                log.error("%s", exc)
                raise Unavailable("changes cannot be made durable now", reason=str(exc)) from exc
        return self.method

    async def call(
        self, redis: Any, scripts: Any, name: str, keys: list[str], args: list[Any]
    ) -> Any:
        """Run a mutating script and return its reply only once the change is on disk."""
        if await self._method() == "always":
            return await scripts.call(redis, name, keys, args)
        s = scripts[name]
        # WAITAOF waits for this connection's own writes: same pipeline, same connection.
        for cmd in (("EVALSHA", s.sha), ("EVAL", s.source)):
            async with self.client.pipeline(transaction=False) as pipe:
                pipe.execute_command(*cmd, len(keys), *keys, *args)
                pipe.execute_command("WAITAOF", 1, 0, self.timeout_ms)
                reply, acked = await pipe.execute(raise_on_error=False)
            if not isinstance(reply, NoScriptError):
                break
        if isinstance(reply, Exception):
            raise reply
        if isinstance(acked, Exception) or int(acked[0]) < 1:
            raise Unavailable(
                "the change was applied but is not on disk yet; repeat the request with the "
                "same id to get its answer once it is",
                reason=str(acked) if isinstance(acked, Exception) else "WAITAOF timed out",
            )
        return reply


_warned_no_aof = False  # once a process: serve checks before its app starts too


async def prepare(settings: Settings, client: Any) -> Durability | None:
    """At start: the strict-mode guard (refusing a Redis that cannot be strict), or None.

    In ``fast`` mode only warn when the AOF is off. An unreachable Redis is not a reason
    to refuse to start: the check is made again before the first change.
    """
    from redis.exceptions import ConnectionError, TimeoutError

    if settings.durability == "fast":
        try:
            p = await inspect(client)
        except (ConnectionError, TimeoutError, OSError):
            return None
        global _warned_no_aof
        if p.appendonly is False and not _warned_no_aof:
            _warned_no_aof = True
            log.warning("Redis runs without AOF: a Redis restart loses every change not drained")
        return None
    guard = Durability(settings, client)
    try:
        method = await guard.check()
    except (ConnectionError, TimeoutError, OSError):
        log.warning("strict durability: Redis unreachable at start; checked before each change")
        return guard
    log.info("strict durability: %s", "appendfsync always" if method == "always" else "WAITAOF")
    return guard
