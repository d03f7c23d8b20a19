"""HTTP: ``POST /v1/reservations`` against the bare endpoints of the same server, and the shape
of its cost (uvicorn workers, cart size, one hot sku against 10 000 spread)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flashstock.bench.common import MAX_STOCK, Ctx, body, median, round_ratio
from flashstock.bench.load import LoadResult
from flashstock.bench.services import Server, cpu_seconds

HOT = body(("HOT", 1))
SPREAD_SKUS = 10_000


def measured(ctx: Ctx, srv: Server, run: Callable[[], LoadResult]) -> dict[str, Any]:
    """One load run with the CPU each party used: server processes, Redis, the generator."""
    pids = srv.pids()
    s0, r0 = cpu_seconds(pids), ctx.redis_cpu()
    res = run()
    s1, r1 = cpu_seconds(pids), ctx.redis_cpu()
    d = res.as_dict()
    n = max(res.requests, 1)
    d["cpu_us_per_request"] = {
        "server": round((s1 - s0) / n * 1e6, 1),
        "redis": round((r1 - r0) / n * 1e6, 1),
        "generator": round(res.generator_cpu_s / n * 1e6, 1),
    }
    return d


def _rounds(ctx: Ctx, srv: Server, runs: dict[str, Callable[[], LoadResult]]) -> dict[str, Any]:
    """Each run once per round, interleaved, so drift on a shared machine hits all alike."""
    out: dict[str, list[dict[str, Any]]] = {k: [] for k in runs}
    for _ in range(ctx.rounds):
        for name, run in runs.items():
            out[name].append(measured(ctx, srv, run))
    return {name: {"rps": median([r["rps"] for r in rs]), "rounds": rs} for name, rs in out.items()}


def _reserve(ctx: Ctx, srv: Server, payload: str, stock: dict[str, int], skus: int = 0):  # type: ignore[no-untyped-def]
    def run() -> LoadResult:
        ctx.flush()
        ctx.stock(stock)
        return ctx.load(srv, "/v1/reservations", payload, skus=skus)

    return run


def overhead(ctx: Ctx, workers: int) -> dict[str, Any]:
    """Reserve (one line, a hot sku with plenty of stock) against bare and floor."""
    with ctx.server(workers) as srv:
        r = _rounds(ctx, srv, {
            "bare": lambda: ctx.load(srv, "/bench/bare", HOT),
            "floor": lambda: ctx.load(srv, "/bench/floor", HOT),
            "reserve": _reserve(ctx, srv, HOT, {"HOT": MAX_STOCK}),
        })  # fmt: skip
    rps = {k: [x["rps"] for x in v["rounds"]] for k, v in r.items()}
    return {
        "workers": workers,
        "connections": ctx.connections,
        **r,
        "reserve_vs_bare": round_ratio(rps["reserve"], rps["bare"]),
        "reserve_vs_floor": round_ratio(rps["reserve"], rps["floor"]),
    }


def shape(ctx: Ctx) -> dict[str, Any]:
    """Carts of 1, 5 and 20 lines on distinct hot skus; one hot sku against 10 000 spread."""
    carts = {n: body(*((f"C{i}", 1) for i in range(n))) for n in (1, 5, 20)}
    cart_stock = {f"C{i}": MAX_STOCK for i in range(20)}
    spread_stock = {f"SKU-{i}": 1000 for i in range(1, SPREAD_SKUS + 1)}
    with ctx.server() as srv:
        runs = {f"cart_{n}": _reserve(ctx, srv, b, cart_stock) for n, b in carts.items()}
        runs["spread_10000"] = _reserve(
            ctx, srv, body(("{sku}", 1)), spread_stock, skus=SPREAD_SKUS
        )
        r = _rounds(ctx, srv, runs)
    for n in (1, 5, 20):
        r[f"cart_{n}"]["lines_per_s"] = round(r[f"cart_{n}"]["rps"] * n, 1)
    rps = {k: [x["rps"] for x in v["rounds"]] for k, v in r.items()}
    r["cart_20_vs_1"] = round_ratio(rps["cart_20"], rps["cart_1"])
    r["spread_vs_hot"] = round_ratio(rps["spread_10000"], rps["cart_1"])
    return {"workers": ctx.workers, "connections": ctx.connections, **r}


def memory_per_hold(ctx: Ctx, holds: int = 20_000) -> dict[str, Any]:
    """Redis memory per active one-line hold, with and without its event still in the stream."""
    import asyncio

    from flashstock.keys import Keys

    ctx.flush()
    ctx.stock({"MEM": MAX_STOCK})
    r = ctx.sync_redis()
    base = int(r.info("memory")["used_memory"])

    async def go(e: Any) -> None:
        sem = asyncio.Semaphore(64)

        async def one(i: int) -> None:
            async with sem:
                await e.reserve([("MEM", 1, None)], reservation_id=f"mem-{i:08d}", ttl_seconds=900)

        await asyncio.gather(*(one(i) for i in range(holds)))

    ctx.run_engine(go)
    used = int(r.info("memory")["used_memory"])
    r.xtrim(Keys("bench", 0).events, maxlen=0)
    trimmed = int(r.info("memory")["used_memory"])
    return {
        "holds": holds,
        "bytes_per_hold_with_event": round((used - base) / holds, 1),
        "bytes_per_hold": round((trimmed - base) / holds, 1),
    }
