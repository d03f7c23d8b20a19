"""The sold-out path: refusals/s once a hot sku has sold out, against reserve/s; and how long
after units come back (release, expiry, restock) buyers are still refused.

The delay is read from the partition stream, on Redis's one clock: from the
event that gave units back (``released``, ``adjusted``; for an expiry the
hold's ``expires_at``) to the first ``reserved`` event after it, while
``connections`` clients keep asking for the sold-out sku.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import orjson

from flashstock.bench.common import MAX_STOCK, Ctx, body, median, round_ratio
from flashstock.bench.http import measured
from flashstock.engine import Engine
from flashstock.keys import Keys

HOT = body(("HOT", 1))
SOLD = body(("SOLD", 1))
CYCLES = 8
GAP_S = 0.3


def _sell_out(ctx: Ctx, extra_holds: int = 0) -> None:
    """SOLD: 100 units held by one reservation, plus ``extra_holds`` one-unit holds."""

    async def go(e: Engine) -> None:
        await e.set_on_hand("SOLD", "default", 100 + extra_holds)
        await e.reserve([("SOLD", 100, None)], reservation_id="sold-base", ttl_seconds=3600)
        for i in range(extra_holds):
            await e.reserve([("SOLD", 1, None)], reservation_id=f"back-{i}", ttl_seconds=3600)

    ctx.run_engine(go)


def rates(ctx: Ctx) -> dict[str, Any]:
    """Interleaved rounds of reserve (plenty of stock) and of the same request on a sold-out sku."""
    runs: dict[str, list[dict[str, Any]]] = {"reserve": [], "sold_out": []}
    with ctx.server() as srv:
        for _ in range(ctx.rounds):
            ctx.flush()
            ctx.stock({"HOT": MAX_STOCK})
            runs["reserve"].append(
                measured(ctx, srv, lambda: ctx.load(srv, "/v1/reservations", HOT))
            )
            ctx.flush()
            _sell_out(ctx)
            runs["sold_out"].append(
                measured(ctx, srv, lambda: ctx.load(srv, "/v1/reservations", SOLD))
            )
    reserves = [r["rps"] for r in runs["reserve"]]
    refusals = [r["status"].get("409", 0) / r["duration_s"] for r in runs["sold_out"]]
    return {
        "reserve_rps": median(reserves),
        "refusals_per_s": round(median(refusals), 1),
        "refusals_vs_reserve": round_ratio(refusals, reserves),
        "rounds": runs,
    }


def _events(ctx: Ctx) -> list[dict[str, Any]]:
    r = ctx.sync_redis()
    return [orjson.loads(f[b"e"]) for _, f in r.xrange(Keys("bench", 0).events)]


def bound(ctx: Ctx) -> dict[str, Any]:
    """Delays from units coming back to the first reservation that takes them, under load."""
    ctx.flush()
    _sell_out(ctx, extra_holds=CYCLES)

    async def expiring(e: Engine) -> None:
        # Units for holds that expire during the load, one a second from 2 s on.
        await e.adjust("SOLD", "default", CYCLES, "received")
        for i in range(CYCLES):
            await e.reserve([("SOLD", 1, None)], reservation_id=f"exp-{i}", ttl_seconds=2 + i)

    load_s = 2 + CYCLES + 1.5
    with ctx.server() as srv:
        result: dict[str, Any] = {}
        t = threading.Thread(
            target=lambda: result.update(
                load=ctx.load(srv, "/v1/reservations", SOLD, duration=load_s)
            ),
            daemon=True,
        )
        ctx.run_engine(expiring)
        t.start()
        time.sleep(0.5)

        async def give_back(e: Engine) -> None:
            for i in range(CYCLES):
                await e.release(f"back-{i}")
                time.sleep(GAP_S)
            for _ in range(CYCLES):
                await e.adjust("SOLD", "default", 1, "received")
                time.sleep(GAP_S)

        ctx.run_engine(give_back)
        t.join()
    evs = _events(ctx)
    delays: dict[str, list[int]] = {"release": [], "restock": [], "expiry": []}
    taken = [e["at"] for e in evs if e["type"] == "reserved"
             and not e["rid"].startswith(("sold-base", "back-", "exp-"))]  # fmt: skip
    for e in evs:
        if e["type"] == "released" and e["rid"].startswith("back-"):
            kind, at = "release", e["at"]
        elif e["type"] == "adjusted" and e["lines"][0]["d"][0] == 1:
            kind, at = "restock", e["at"]
        elif e["type"] == "expired" and e["rid"].startswith("exp-"):
            kind, at = "expiry", e["exp"]
        else:
            continue
        after = [x for x in taken if x >= at]
        if after:
            delays[kind].append(min(after) - at)
    load = result["load"]
    every = [d for ds in delays.values() for d in ds]
    return {
        "connections": ctx.connections,
        "delays_ms": delays,
        "max_ms": max(every) if every else None,
        "p50_ms": median([float(d) for d in every]),
        "samples": len(every),
        "load_status": load.status,
    }
