"""flashstock against the PostgreSQL approaches, behind the same HTTP server and load.

One hot sku at 16, 64 and 256 clients, with enough stock and with a sell-out.
Reported per system: successes/s (with a sell-out: units sold over the time
from the first hold to the last, by the store's clock), p50/p99, spurious refusals (a 409 whose ``available`` covered the
request) and oversell (units held beyond stock, or holds the server did not
record). The four systems run back to back at each setting.
"""

from __future__ import annotations

import time
from typing import Any

from flashstock.bench import pgalt
from flashstock.bench.common import MAX_STOCK, Ctx, body, ratio
from flashstock.bench.services import Server
from flashstock.keys import Keys

CLIENTS = (16, 64, 256)
SELLOUT_UNITS = 2000
SYSTEMS = ("flashstock", *pgalt.APPROACHES)
PATHS = {"flashstock": "/v1/reservations", **{a: f"/bench/pg/{a}" for a in pgalt.APPROACHES}}


def _sale_window(ctx: Ctx, system: str) -> tuple[float, float]:
    """Seconds (epoch) of the first and the last hold of the run, by the store's clock."""
    if system == "flashstock":
        import orjson

        ats = [
            orjson.loads(f[b"e"])["at"]
            for _, f in ctx.sync_redis().xrange(Keys("bench", 0).events)
            if b'"reserved"' in f[b"e"]
        ]
        return (min(ats) / 1000, max(ats) / 1000) if ats else (0.0, 0.0)
    import psycopg

    assert ctx.pg is not None
    with psycopg.connect(ctx.pg.url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT extract(epoch FROM min(created_at)), extract(epoch FROM max(created_at)) "
            "FROM bench_holds"
        ).fetchone()
    return (float(row[0]), float(row[1])) if row and row[0] is not None else (0.0, 0.0)


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
    res = ctx.load(srv, PATHS[system], body(("HOT", 1)), connections=clients, check=True)
    ok = res.count(201)
    st = _state(ctx, system)
    while (again := _state(ctx, system)) != st:  # requests the generator left in flight
        st = again
        time.sleep(0.05)
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
        # The sale's own pace, by the store's clock: from its first hold to its last. The load
        # generator's start-up would otherwise weigh on a sale that lasts a fraction of a second.
        first, last = _sale_window(ctx, system)
        sold_out = st["reserved"] >= st["on_hand"]
        elapsed = (last - first) if sold_out and last > first else res.duration_s
        out["sold_out"] = sold_out
        out["units_held"] = st["reserved"]
        out["seconds_to_sell_out"] = round(elapsed, 3) if sold_out else None
        held = st["reserved"] if sold_out else ok
        out["successes_per_s"] = round(held / elapsed, 1) if elapsed > 0 else 0.0
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
