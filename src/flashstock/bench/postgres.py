"""flashstock against the PostgreSQL approaches, behind the same HTTP server and load.

One hot sku at 16, 64 and 256 clients, with enough stock and with a sell-out.
Reported per system: successes/s (with a sell-out: units sold over the time to
sell out), p50/p99, spurious refusals (a 409 whose ``available`` covered the
request) and oversell (units held beyond stock, or holds the server did not
record). The four systems run back to back at each setting.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from flashstock.bench import pgalt
from flashstock.bench.common import MAX_STOCK, Ctx, body, ratio
from flashstock.bench.services import Server
from flashstock.keys import Keys

CLIENTS = (16, 64, 256)
SELLOUT_UNITS = 2000
SYSTEMS = ("flashstock", *pgalt.APPROACHES)
PATHS = {"flashstock": "/v1/reservations", **{a: f"/bench/pg/{a}" for a in pgalt.APPROACHES}}


def _available_reader(ctx: Ctx, system: str) -> Callable[[], int]:
    if system == "flashstock":
        r = ctx.sync_redis()
        key = Keys("bench", 0).level("HOT", "default")

        def fs() -> int:
            on_hand, reserved = r.hmget(key, "on_hand", "reserved")
            return int(on_hand or 0) - int(reserved or 0)

        return fs
    import psycopg

    assert ctx.pg is not None
    conn = psycopg.connect(ctx.pg.url, autocommit=True)

    def pg() -> int:
        row = conn.execute(
            "SELECT on_hand - reserved FROM bench_levels WHERE sku = 'HOT'"
        ).fetchone()
        return int(row[0]) if row else 0

    return pg


def _setup(ctx: Ctx, system: str, units: int) -> None:
    if system == "flashstock":
        ctx.flush()
        ctx.stock({"HOT": units})
    else:
        assert ctx.pg is not None
        pgalt.setup(ctx.pg.url, "HOT", units)


def _state(ctx: Ctx, system: str) -> dict[str, int]:
    if system == "flashstock":
        lv = ctx.sync_redis().hgetall(Keys("bench", 0).level("HOT", "default"))
        return {"on_hand": int(lv[b"on_hand"]), "reserved": int(lv[b"reserved"])}
    assert ctx.pg is not None
    return pgalt.state(ctx.pg.url, "HOT")


def one(ctx: Ctx, srv: Server, system: str, clients: int, sellout: bool) -> dict[str, Any]:
    units = SELLOUT_UNITS if sellout else (MAX_STOCK if system == "flashstock" else 10**9)
    _setup(ctx, system, units)
    read = _available_reader(ctx, system)
    sold_out_at: list[float] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set() and not sold_out_at:
            if read() <= 0:
                sold_out_at.append(time.perf_counter())
            stop.wait(0.005)

    watcher = threading.Thread(target=watch, daemon=True)
    t0 = time.perf_counter()
    watcher.start()
    res = ctx.load(srv, PATHS[system], body(("HOT", 1)), connections=clients, check=True)
    stop.set()
    watcher.join()
    ok = res.count(201)
    st = _state(ctx, system)
    # Held beyond stock, or (PostgreSQL) a level that disagrees with its holds. Units held for
    # requests still in flight when the generator stopped are held, not oversold: counted apart.
    oversold = max(0, st["reserved"] - st["on_hand"])
    if "held_units" in st:
        oversold += abs(st["held_units"] - st["reserved"])
    out: dict[str, Any] = {
        "successes": ok,
        "refusals": res.count(409),
        "other": res.requests - ok - res.count(409),
        "spurious_refusals": res.spurious,
        "oversell": oversold,
        "held_not_acknowledged": st["reserved"] - ok,
        "p50_ms": res.latency_ms["p50"],
        "p99_ms": res.latency_ms["p99"],
        "requests_per_s": round(res.rps, 1),
    }
    if sellout:
        elapsed = (sold_out_at[0] - t0) if sold_out_at else res.duration_s
        out["sold_out"] = bool(sold_out_at)
        out["units_held"] = st["reserved"]
        out["seconds_to_sell_out"] = round(elapsed, 3)
        out["successes_per_s"] = round(ok / elapsed, 1) if elapsed > 0 else 0.0
    else:
        out["successes_per_s"] = round(ok / res.duration_s, 1)
    return out


def compare(ctx: Ctx) -> dict[str, Any]:
    table: dict[str, dict[str, dict[str, Any]]] = {}
    with ctx.server() as srv:
        for scenario in ("enough_stock", "sell_out"):
            for clients in CLIENTS:
                key = f"{scenario}/{clients}"
                table[key] = {s: one(ctx, srv, s, clients, scenario == "sell_out") for s in SYSTEMS}
    ratios: dict[str, Any] = {}
    for key, row in table.items():
        fs = row["flashstock"]["successes_per_s"]
        best = max(row[a]["successes_per_s"] for a in pgalt.APPROACHES)
        ratios[key] = {
            "vs_optimistic": ratio(fs, row["optimistic"]["successes_per_s"]),
            "vs_best_postgres": ratio(fs, best),
        }
    return {
        "workers": ctx.workers,
        "sellout_units": SELLOUT_UNITS,
        "table": table,
        "ratios": ratios,
        "min_vs_optimistic": min(r["vs_optimistic"] for r in ratios.values()),
        "min_vs_best_postgres": min(r["vs_best_postgres"] for r in ratios.values()),
        "flashstock_spurious": sum(r["flashstock"]["spurious_refusals"] for r in table.values()),
        "flashstock_oversell": sum(r["flashstock"]["oversell"] for r in table.values()),
    }
