"""Ledger lag and the worker's drain rate, against PostgreSQL.

Lag: ``flashstock worker`` runs while clients reserve as fast as the server
answers; a poller reads the newest stream position visible in
``ledger_events`` every few milliseconds. An event's lag is the first poll
that saw it minus its ``at`` (Redis's clock when the reservation was made, on
the same machine's clock as the poller), so it is an upper bound by at most
one poll interval.

Drain: with the worker stopped, the engine writes a backlog of events; the
worker is started and the rate is the backlog over the time from its first
committed row to its last.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from typing import Any

from flashstock.bench.common import MAX_STOCK, Ctx, body, ratio
from flashstock.engine import Engine
from flashstock.keys import Keys

POLL_S = 0.003
BACKLOG = 60_000


def _newest(conn: Any) -> tuple[int, int]:
    row = conn.execute(
        "SELECT stream_ms, stream_seq FROM ledger_events WHERE partition = 0 "
        "ORDER BY stream_ms DESC, stream_seq DESC LIMIT 1"
    ).fetchone()
    return (int(row[0]), int(row[1])) if row else (0, -1)


def _worker(ctx: Ctx) -> subprocess.Popen[bytes]:
    log = (ctx.out / "worker.log").open("ab")
    return subprocess.Popen(
        [sys.executable, "-m", "flashstock.cli", "worker"],
        env={**os.environ, **ctx.env()}, stdout=log, stderr=log, start_new_session=True,
    )  # fmt: skip


def _stop(p: subprocess.Popen[bytes]) -> None:
    if p.poll() is None:
        os.killpg(p.pid, signal.SIGTERM)
        p.wait(30)


def _watch(conn: Any, until: threading.Event, seen: list[tuple[float, tuple[int, int]]]) -> None:
    last = (0, -1)
    while not until.is_set():
        pos = _newest(conn)
        if pos != last:
            seen.append((time.time() * 1000, pos))
            last = pos
        time.sleep(POLL_S)


def _pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return round(xs[min(len(xs) - 1, int(p / 100 * len(xs)))], 1) if xs else 0.0


def _wait_drained(ctx: Ctx, conn: Any, timeout: float = 120) -> tuple[int, int]:
    r = ctx.sync_redis()
    last = r.xrevrange(Keys("bench", 0).events, count=1)
    want = tuple(int(x) for x in last[0][0].decode().split("-")) if last else (0, -1)
    deadline = time.monotonic() + timeout
    while _newest(conn) < want and time.monotonic() < deadline:
        time.sleep(0.01)
    return want  # type: ignore[return-value]


def _count(conn: Any) -> int:
    row = conn.execute("SELECT count(*) FROM ledger_events").fetchone()
    return int(row[0]) if row else 0


def _wait_count(conn: Any, n: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while _count(conn) < n and time.monotonic() < deadline:
        time.sleep(0.01)


def lag(ctx: Ctx) -> dict[str, Any]:
    import psycopg

    from flashstock.db import upgrade

    assert ctx.pg is not None
    upgrade(ctx.pg.url)
    with psycopg.connect(ctx.pg.url, autocommit=True) as conn:
        conn.execute("TRUNCATE ledger_events CASCADE")
        ctx.flush()
        ctx.stock({"HOT": MAX_STOCK})
        worker = _worker(ctx)
        seen: list[tuple[float, tuple[int, int]]] = []
        stop = threading.Event()
        poller = threading.Thread(target=_watch, args=(conn, stop, seen), daemon=True)
        try:
            time.sleep(2)  # the worker's start-up
            with ctx.server() as srv:
                poller.start()
                res = ctx.load(srv, "/v1/reservations", body(("HOT", 1)))
            _wait_drained(ctx, conn)
        finally:
            stop.set()
            if poller.is_alive():
                poller.join()
            _stop(worker)
        rows = conn.execute(
            "SELECT stream_ms, stream_seq, (extract(epoch FROM at) * 1000)::bigint "
            "FROM ledger_events WHERE type = 'reserved' AND payload->>'rid' <> '' "
            "ORDER BY stream_ms, stream_seq"
        ).fetchall()
    lags: list[float] = []
    i = 0
    for ms, seq, at in rows:
        while i < len(seen) and seen[i][1] < (ms, seq):
            i += 1
        if i < len(seen):
            lags.append(seen[i][0] - at)
    return {
        "reserve_rps": round(res.rps, 1),
        "events": len(rows),
        "measured": len(lags),
        "p50_ms": _pct(lags, 50),
        "p99_ms": _pct(lags, 99),
        "max_ms": _pct(lags, 100),
        "poll_interval_ms": POLL_S * 1000,
    }


def drain(ctx: Ctx, reserve_rps: float, workers: int = 1) -> dict[str, Any]:
    import psycopg

    assert ctx.pg is not None
    ctx.flush()
    ctx.stock({"HOT": MAX_STOCK})

    async def backlog(e: Engine) -> None:
        sem = asyncio.Semaphore(128)

        async def one() -> None:
            async with sem:
                await e.reserve([("HOT", 1, None)])

        await asyncio.gather(*(one() for _ in range(BACKLOG)))

    ctx.run_engine(backlog)
    with psycopg.connect(ctx.pg.url, autocommit=True) as conn:
        conn.execute("TRUNCATE ledger_events CASCADE")
        n = ctx.sync_redis().xlen(Keys("bench", 0).events)
        procs = [_worker(ctx) for _ in range(workers)]
        try:
            while _newest(conn) == (0, -1):
                time.sleep(0.002)
            t0 = time.perf_counter()
            # The newest position first (an index read), then every event counted: with two
            # workers the last batch can commit while another's earlier one is in flight.
            _wait_drained(ctx, conn)
            _wait_count(conn, n)
            elapsed = time.perf_counter() - t0
        finally:
            for p in procs:
                _stop(p)
        persisted = _count(conn)
    rate = n / elapsed if elapsed else 0.0
    return {
        "workers": workers,
        "backlog_events": n,
        "persisted": persisted,
        "seconds": round(elapsed, 3),
        "events_per_s": round(rate, 1),
        "peak_reserve_rps": reserve_rps,
        "drain_vs_peak_reserve": ratio(rate, reserve_rps),
    }
