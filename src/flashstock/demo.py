"""``flashstock demo``: a flash sale end to end on a private embedded store, with a report.

A catalog is warmed from a generic CSV, then hundreds of concurrent buyers
rush a few hot SKUs: some place their order, some empty their cart, some
abandon it and let the hold expire, and refused buyers retry while abandoned
units come back. Afterwards part of the orders ship and one is cancelled, the
write-behind worker drains every event into the SQLite ledger, and the ledger
is reconciled against Redis.
"""

from __future__ import annotations

import asyncio
import random
import shutil
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from flashstock import embedded
from flashstock.engine import Engine
from flashstock.errors import FlashstockError
from flashstock.redis_client import create_async, create_sync
from flashstock.settings import Settings

HOLD_TTL = 2  # seconds: short, so abandoned carts come back during the sale


@dataclass
class Tally:
    attempts: int = 0
    holds: int = 0
    orders: list[str] = field(default_factory=list)
    released: int = 0
    abandoned: int = 0
    backordered_units: int = 0
    refusals: Counter[str] = field(default_factory=Counter)


def _catalog(hot: list[str], stock: int) -> bytes:
    rows = ["sku,location,on_hand,per_customer_limit,backorder,backorder_limit"]
    for sku in hot:
        rows.append(f"{sku},east,{stock * 3 // 5},2,deny,")
        rows.append(f"{sku},west,{stock - stock * 3 // 5},2,deny,")
    rows.append("PREORDER-1,east,0,,allow,25")
    rows += [f"REG-{i:03d},east,100,,deny," for i in range(20)]
    return ("\n".join(rows) + "\n").encode()


async def _buyer(engine: Engine, n: int, hot: list[str], t: Tally, rng: random.Random) -> None:
    await asyncio.sleep(rng.random() * 3.0)  # buyers arrive over the first seconds of the drop
    customer = f"customer-{n}"
    for attempt in range(4):
        t.attempts += 1
        sku = "PREORDER-1" if n % 50 == 0 else rng.choice(hot)
        # Every tenth buyer is a reseller's bot asking for more than the limit of 2 per customer.
        qty = 3 if n % 10 == 5 and sku != "PREORDER-1" else rng.choice((1, 1, 2))
        items: list[tuple[str, int, str | None]] = [(sku, qty, None)]
        if rng.random() < 0.2:
            items.append((f"REG-{rng.randrange(20):03d}", 1, None))
        try:
            r = await engine.reserve(items, reservation_id=f"cart-{n}-{attempt}",
                                     customer_id=customer, ttl_seconds=HOLD_TTL)  # fmt: skip
        except FlashstockError as exc:
            t.refusals[exc.code] += 1
            await asyncio.sleep(0.4 + rng.random())
            continue
        t.holds += 1
        t.backordered_units += sum(i["backordered"] for i in r.data["items"])
        await asyncio.sleep(rng.random() * 0.5)
        fate = rng.random()
        rid = r.data["reservation_id"]
        if fate < 0.55:
            try:
                await engine.commit(rid, f"order-{n}")
                t.orders.append(f"order-{n}")
            except FlashstockError as exc:
                t.refusals[exc.code] += 1
        elif fate < 0.70:
            await engine.release(rid)
            t.released += 1
        else:
            t.abandoned += 1
        return


async def _sale(s: Settings, hot_skus: int, stock: int, buyers: int) -> dict[str, Any]:
    from flashstock.warm import warm_bytes

    rng = random.Random(7)
    client = create_async(s.redis_url or "", "demo", max_connections=64)
    engine = Engine(client, s)
    hot = [f"DROP-{i + 1}" for i in range(hot_skus)]
    report = await warm_bytes(engine, _catalog(hot, stock), format="generic")
    t = Tally()
    started = time.perf_counter()
    await asyncio.gather(*(_buyer(engine, n, hot, t, rng) for n in range(buyers)))
    sale_seconds = time.perf_counter() - started
    await asyncio.sleep(HOLD_TTL + 0.2)  # every abandoned cart has now expired
    await engine.adjust("PREORDER-1", "east", 30, "received")  # the pre-ordered units arrive
    shipped = t.orders[: len(t.orders) // 2]
    for oid in shipped:
        await engine.fulfill(oid, fulfillment_id=f"ship-{oid}")
    cancelled = t.orders[len(t.orders) // 2 : len(t.orders) // 2 + 1]
    for oid in cancelled:
        await engine.cancel(oid)
    levels = {sku: (await engine.get_stock(sku)).data for sku in [*hot, "PREORDER-1"]}
    await client.aclose()
    return {"tally": t, "levels": levels, "warm": report, "seconds": sale_seconds,
            "shipped": len(shipped), "cancelled": len(cancelled), "hot": hot}  # fmt: skip


def _stream_events(s: Settings) -> int:
    from flashstock.keys import Keys

    r = create_sync(s.redis_url or "", "demo")
    total = 0
    for p in range(s.partitions):
        total += int(r.hget(Keys(s.key_prefix, p).stats, "events") or 0)
    return total


def _ledger_rows(s: Settings) -> int:
    from sqlalchemy import func, select

    from flashstock.db import make_engine
    from flashstock.db.models import LedgerEvent

    db = make_engine(s.database_url or "")
    with db.connect() as conn:
        n = conn.execute(select(func.count()).select_from(LedgerEvent)).scalar_one()
    db.dispose()
    return int(n)


def run_demo(hot_skus: int = 3, stock: int = 50, buyers: int = 400, echo: Any = print) -> bool:
    """Run the sale and print the report; True when nothing was oversold and the ledger agrees."""
    from flashstock.db import make_engine, upgrade
    from flashstock.reconcile import reconcile
    from flashstock.worker import LedgerWorker, run_worker

    tmp = tempfile.mkdtemp(prefix="flashstock-demo-")
    emb = embedded.start(
        Settings(data_dir=tmp, redis_url=None, database_url=None, key_prefix="demo")
    )
    s = emb.settings
    upgrade(s.database_url or "")
    echo(f"flashstock demo: Redis via {emb.kind}, ledger {s.database_url}")
    echo(f"a flash sale of {hot_skus} hot SKUs x {stock} units, {buyers} concurrent buyers, "
         f"holds of {HOLD_TTL}s\n")  # fmt: skip

    stop = threading.Event()
    worker = threading.Thread(
        target=run_worker, args=(s,), kwargs={"stop_event": stop}, daemon=True
    )
    worker.start()
    try:
        out = asyncio.run(_sale(s, hot_skus, stock, buyers))
    finally:
        stop.set()
        worker.join(timeout=10)
    redis = create_sync(s.redis_url or "", "demo")
    db = make_engine(s.database_url or "")
    LedgerWorker(redis, db, s).drain()
    events, rows = _stream_events(s), _ledger_rows(s)
    diffs = reconcile(redis, db, s)
    db.dispose()

    t: Tally = out["tally"]
    w = out["warm"]
    oversold, sold = 0, 0
    echo(f"warmed           {w.rows} rows ({w.levels_changed} levels, {w.policies} policies)")
    echo(f"sale             {out['seconds']:.1f} s")
    echo(f"attempts         {t.attempts}")
    echo(f"holds            {t.holds}  (released {t.released}, abandoned {t.abandoned})")
    echo(
        f"orders           {len(t.orders)}  (shipped {out['shipped']}, cancelled {out['cancelled']})"
    )
    echo(f"backordered      {t.backordered_units} units of PREORDER-1")
    refusals = ", ".join(f"{k} {v}" for k, v in t.refusals.most_common()) or "none"
    echo(f"refusals         {sum(t.refusals.values())}  ({refusals})")
    echo("")
    echo(
        f"{'sku':<12}{'stock':>7}{'sold':>7}{'on_hand':>9}{'reserved':>10}{'committed':>11}{'available':>11}"
    )
    for sku in out["hot"]:
        lv = out["levels"][sku]["total"]
        units = stock - lv["on_hand"] + lv["committed"]  # shipped + still committed
        sold += units
        oversold += max(0, units - stock)
        oversold += sum(max(0, -x["available"]) for x in out["levels"][sku]["locations"])
        echo(f"{sku:<12}{stock:>7}{units:>7}{lv['on_hand']:>9}{lv['reserved']:>10}"
             f"{lv['committed']:>11}{lv['available']:>11}")  # fmt: skip
    echo("")
    echo(f"units sold       {sold} of {stock * hot_skus}")
    echo(f"units oversold   {oversold}")
    echo(f"ledger rows      {rows}  /  events {events}")
    echo(f"reconcile        {'clean' if not diffs else f'{len(diffs)} difference(s)'}")
    for d in diffs[:10]:
        echo(f"  {d}")
    emb.stop()
    shutil.rmtree(tmp, ignore_errors=True)
    return oversold == 0 and rows == events and not diffs
