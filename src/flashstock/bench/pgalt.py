"""The PostgreSQL stock code users would write instead of flashstock, served by the same app.

One table of levels and one of holds, and three ways to take ``q`` units of a
sku, each in one transaction that also records the hold:

* ``optimistic``: read the level and its version, ``UPDATE … WHERE version =
  v``; on a lost race retry up to 3 times, sleeping 50·attempt ms, then give up
  (the code many shops copy).
* ``for_update``: ``SELECT … FOR UPDATE``, check, ``UPDATE``.
* ``conditional``: one ``UPDATE … WHERE on_hand - reserved >= q``.

A refusal answers ``409`` with flashstock's body shape, ``available`` being
what the transaction last read, so a refusal with ``available >= requested``
(the optimistic code giving up while stock was there) counts as spurious.
"""

from __future__ import annotations

import asyncio
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS bench_levels (
    sku text PRIMARY KEY,
    on_hand integer NOT NULL,
    reserved integer NOT NULL DEFAULT 0,
    version integer NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS bench_holds (
    id bigserial PRIMARY KEY,
    sku text NOT NULL,
    quantity integer NOT NULL,
    created_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
"""

RETRIES = 3
BACKOFF_MS = 50
APPROACHES = ("optimistic", "for_update", "conditional")


def setup(url: str, sku: str, on_hand: int) -> None:
    """(Re)create the tables with one level of ``on_hand`` units."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS bench_levels, bench_holds")
        conn.execute(SCHEMA)  # type: ignore[arg-type]
        conn.execute("INSERT INTO bench_levels (sku, on_hand) VALUES (%s, %s)", (sku, on_hand))


def state(url: str, sku: str) -> dict[str, int]:
    """The level, the holds recorded for it, and whether more was held than stocked."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        # One statement, one snapshot: a transaction committing between two reads would
        # otherwise look like a level that disagrees with its holds.
        row = conn.execute(
            "SELECT l.on_hand, l.reserved, h.n, h.units FROM bench_levels l, "
            "(SELECT count(*) AS n, coalesce(sum(quantity), 0) AS units FROM bench_holds "
            "WHERE sku = %s) h WHERE l.sku = %s",
            (sku, sku),
        ).fetchone()
    assert row is not None
    return {"on_hand": row[0], "reserved": row[1], "holds": row[2], "held_units": int(row[3])}


def _refused(sku: str, q: int, available: int) -> tuple[int, dict[str, Any]]:
    return 409, {
        "error": "insufficient_stock",
        "lines": [{"sku": sku, "location": None, "requested": q, "available": max(available, 0)}],
    }


class Approaches:
    """A small pool of async psycopg connections and the three reserve functions."""

    def __init__(self, url: str, pool_size: int = 16) -> None:
        self.url = url
        self.size = pool_size
        self._pool: asyncio.Queue[Any] | None = None
        self._lock = asyncio.Lock()

    async def _conn(self) -> Any:
        if self._pool is None:
            async with self._lock:
                if self._pool is None:
                    import psycopg

                    pool: asyncio.Queue[Any] = asyncio.Queue()
                    for _ in range(self.size):
                        pool.put_nowait(await psycopg.AsyncConnection.connect(self.url))
                    self._pool = pool
        return await self._pool.get()

    async def reserve(self, approach: str, sku: str, q: int) -> tuple[int, dict[str, Any]]:
        fn = getattr(self, approach, None)
        if approach not in APPROACHES or fn is None:
            return 404, {"error": "not_found"}
        conn = await self._conn()
        assert self._pool is not None
        try:
            return await fn(conn, sku, q)  # type: ignore[no-any-return]
        except Exception:
            await conn.rollback()
            raise
        finally:
            self._pool.put_nowait(conn)

    @staticmethod
    async def _hold(cur: Any, sku: str, q: int) -> tuple[int, dict[str, Any]]:
        await cur.execute(
            "INSERT INTO bench_holds (sku, quantity) VALUES (%s, %s) RETURNING id", (sku, q)
        )
        row = await cur.fetchone()
        return 201, {"reservation_id": str(row[0]), "status": "active",
                     "items": [{"sku": sku, "quantity": q}]}  # fmt: skip

    async def optimistic(self, conn: Any, sku: str, q: int) -> tuple[int, dict[str, Any]]:
        available = 0
        for attempt in range(RETRIES + 1):
            if attempt:
                await asyncio.sleep(BACKOFF_MS * attempt / 1000)
            async with conn.transaction(), conn.cursor() as cur:
                await cur.execute(
                    "SELECT on_hand - reserved, version FROM bench_levels WHERE sku = %s", (sku,)
                )
                available, version = await cur.fetchone()
                if available < q:
                    return _refused(sku, q, available)
                await cur.execute(
                    "UPDATE bench_levels SET reserved = reserved + %s, version = version + 1 "
                    "WHERE sku = %s AND version = %s",
                    (q, sku, version),
                )
                if cur.rowcount == 1:
                    return await self._hold(cur, sku, q)
        return _refused(sku, q, available)  # gave up after the retries

    async def for_update(self, conn: Any, sku: str, q: int) -> tuple[int, dict[str, Any]]:
        async with conn.transaction(), conn.cursor() as cur:
            await cur.execute(
                "SELECT on_hand - reserved FROM bench_levels WHERE sku = %s FOR UPDATE", (sku,)
            )
            (available,) = await cur.fetchone()
            if available < q:
                return _refused(sku, q, available)
            await cur.execute(
                "UPDATE bench_levels SET reserved = reserved + %s WHERE sku = %s", (q, sku)
            )
            return await self._hold(cur, sku, q)

    async def conditional(self, conn: Any, sku: str, q: int) -> tuple[int, dict[str, Any]]:
        async with conn.transaction(), conn.cursor() as cur:
            await cur.execute(
                "UPDATE bench_levels SET reserved = reserved + %s "
                "WHERE sku = %s AND on_hand - reserved >= %s RETURNING on_hand - reserved",
                (q, sku, q),
            )
            if await cur.fetchone() is None:
                await cur.execute(
                    "SELECT on_hand - reserved FROM bench_levels WHERE sku = %s", (sku,)
                )
                (available,) = await cur.fetchone()
                return _refused(sku, q, available)
            return await self._hold(cur, sku, q)
