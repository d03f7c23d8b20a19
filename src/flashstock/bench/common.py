"""What every measurement shares: the run's services, a controller engine, medians, ratios."""

from __future__ import annotations

import asyncio
import statistics
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import redis

from flashstock.bench.load import LoadResult, run_load
from flashstock.bench.services import PgDatabase, PrivateRedis, Server
from flashstock.engine import Engine
from flashstock.settings import Settings

T = TypeVar("T")
PREFIX = "bench"
MAX_STOCK = 1_000_000


@dataclass
class Ctx:
    """One run: options, services, and where logs go."""

    redis: PrivateRedis
    pg: PgDatabase | None
    out: Path
    duration: float = 5.0
    rounds: int = 3
    generator: str = "auto"
    connections: int = 64
    workers: int = 2
    notes: list[str] = field(default_factory=list)

    @property
    def settings(self) -> Settings:
        db = self.pg.url if self.pg is not None else "sqlite://"
        return Settings(key_prefix=PREFIX, redis_url=self.redis.url, database_url=db)

    def env(self, **extra: str) -> dict[str, str]:
        s = self.settings
        env = {
            "FLASHSTOCK_REDIS_URL": s.redis_url or "",
            "FLASHSTOCK_DATABASE_URL": s.database_url or "",
            "FLASHSTOCK_KEY_PREFIX": PREFIX,
        }
        if self.pg is not None:
            env["FLASHSTOCK_BENCH_PG_URL"] = self.pg.url
        return {**env, **extra}

    def sync_redis(self) -> redis.Redis:
        return redis.Redis.from_url(self.redis.url)

    def flush(self) -> None:
        """Empty the private Redis (ours alone), keeping its script cache."""
        self.sync_redis().flushall()

    def run_engine(self, fn: Callable[[Engine], Awaitable[T]], *, as_server: bool = False) -> T:
        """Run ``fn(engine)`` on a fresh engine and client (the controller's, not the server's);
        ``as_server``: on uvloop and the multiplexed connection, as the API runs it."""
        from flashstock.redis_client import create_async, multiplexed

        async def go() -> T:
            client = create_async(self.redis.url, "bench")
            if as_server:
                client = multiplexed(client, self.redis.url, "bench")
            try:
                return await fn(Engine(client, self.settings))
            finally:
                await client.aclose()

        if as_server:
            import uvloop

            return uvloop.run(go())
        return asyncio.run(go())

    def stock(self, levels: dict[str, int]) -> None:
        """Set on_hand of each sku at ``default``."""

        async def go(e: Engine) -> None:
            sem = asyncio.Semaphore(64)

            async def one(sku: str, n: int) -> None:
                async with sem:
                    await e.set_on_hand(sku, "default", n)

            await asyncio.gather(*(one(k, v) for k, v in levels.items()))

        self.run_engine(go)

    @contextmanager
    def server(self, workers: int | None = None, **env: str) -> Iterator[Server]:
        srv = Server(
            "flashstock.bench.app:create_bench_app",
            self.env(**env),
            workers=workers or self.workers,
            log=self.out / "server.log",
        )
        srv.start()
        try:
            yield srv
        finally:
            srv.stop()

    def load(
        self, srv: Server, path: str, body: str, *, connections: int | None = None,
        duration: float | None = None, skus: int = 0, check: bool = False,
    ) -> LoadResult:  # fmt: skip
        return run_load(
            srv.url, path, body, connections=connections or self.connections,
            duration=duration or self.duration, skus=skus, generator=self.generator, check=check,
        )  # fmt: skip

    def redis_cpu(self) -> float:
        info = self.sync_redis().info("cpu")
        return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else 0.0


def ratio(a: float, b: float) -> float:
    return round(a / b, 3) if b else 0.0


def round_ratio(a: list[float], b: list[float]) -> float:
    """The median of the per-round ratios ``a[i] / b[i]``: runs of one round are adjacent in
    time, so drift on a shared machine cancels within each ratio."""
    return round(median([x / y for x, y in zip(a, b, strict=True) if y]), 3)


def body(*lines: tuple[str, int], **extra: Any) -> str:
    import orjson

    return orjson.dumps({**extra, "items": [{"sku": s, "quantity": q} for s, q in lines]}).decode()
