"""The engine's in-process reserve rate against ``redis-benchmark`` running the same script.

redis-benchmark sends ``EVALSHA`` of the reserve script with the very
arguments the engine sends (captured from an engine call), a fresh random
reservation id per call, on the same key shape. It runs without pipelining
and with 16 commands pipelined; the higher is the ceiling.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import time
from typing import Any

from flashstock.bench.common import MAX_STOCK, Ctx, median, round_ratio
from flashstock.engine import Engine

MARK = "bench-rid-mark"


class _Recorder:
    """Stands in for the Redis client and keeps the arguments of the script call."""

    def __init__(self) -> None:
        self.args: tuple[Any, ...] = ()

    async def evalsha(self, *args: Any) -> Any:
        self.args = args
        return [0, b"{}"]


def reserve_command(ctx: Ctx) -> list[str]:
    """``EVALSHA sha numkeys keys… args…`` exactly as the engine sends a one-line reserve of HOT."""
    rec = _Recorder()
    engine = Engine(rec, ctx.settings)
    asyncio.run(engine.reserve([("HOT", 1, None)], reservation_id=MARK))
    args = [a.decode() if isinstance(a, bytes) else str(a) for a in rec.args]
    return ["EVALSHA", *("bench:__rand_int__" if a == MARK else a for a in args)]


def redis_benchmark(ctx: Ctx, pipeline: int, clients: int = 50) -> float:
    """Reserves per second redis-benchmark gets from the script (run for about ctx.duration)."""
    cmd = reserve_command(ctx)
    n = 5000
    rate = 0.0
    while True:  # size the run to last about ctx.duration seconds
        ctx.flush()
        ctx.stock({"HOT": MAX_STOCK})
        t0 = time.perf_counter()
        out = subprocess.run(
            ["redis-benchmark", "-p", str(ctx.redis.port), "-c", str(clients), "-n", str(n),
             "-P", str(pipeline), "-r", "2147483647", "--csv", *cmd],
            capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        wall = time.perf_counter() - t0
        m = re.search(r'^"[^"]*","([\d.]+)"', out.stdout, re.M)
        if m is None:
            raise RuntimeError(f"redis-benchmark failed: {out.stdout[-500:]} {out.stderr[-500:]}")
        rate = float(m.group(1))
        if wall >= ctx.duration * 0.6 or n >= 5_000_000:
            return rate
        n = int(rate * ctx.duration)


def engine_rate(ctx: Ctx, tasks: int = 128) -> dict[str, Any]:
    """Reserves per second from one Python process: ``tasks`` concurrent reserve loops."""
    ctx.flush()
    ctx.stock({"HOT": MAX_STOCK})

    async def go(e: Engine) -> dict[str, Any]:
        done = refused = 0
        stop = time.perf_counter() + ctx.duration

        async def loop() -> None:
            nonlocal done, refused
            while time.perf_counter() < stop:
                try:
                    await e.reserve([("HOT", 1, None)])
                    done += 1
                except Exception:  # noqa: BLE001 - counted, and the run is then invalid
                    refused += 1

        t0 = time.perf_counter()
        cpu0 = time.process_time()
        await asyncio.gather(*(loop() for _ in range(tasks)))
        wall = time.perf_counter() - t0
        cpu = time.process_time() - cpu0
        return {
            "rps": round(done / wall, 1),
            "failed": refused,
            "python_cpu_us_per_reserve": round(cpu / max(done, 1) * 1e6, 1),
        }

    return ctx.run_engine(go, as_server=True)


def ceiling(ctx: Ctx) -> dict[str, Any]:
    if shutil.which("redis-benchmark") is None:
        return {"skipped": "redis-benchmark not on PATH"}
    rounds: dict[str, list[Any]] = {"engine": [], "redis_benchmark_p1": [],
                                     "redis_benchmark_p16": []}  # fmt: skip
    for _ in range(ctx.rounds):
        rounds["engine"].append(engine_rate(ctx))
        rounds["redis_benchmark_p1"].append(redis_benchmark(ctx, 1))
        rounds["redis_benchmark_p16"].append(redis_benchmark(ctx, 16))
    engine = [r["rps"] for r in rounds["engine"]]
    top = [
        max(a, b)
        for a, b in zip(rounds["redis_benchmark_p1"], rounds["redis_benchmark_p16"], strict=True)
    ]
    return {
        "engine_rps": median(engine),
        "redis_benchmark_rps": {
            "pipeline_1": median(rounds["redis_benchmark_p1"]),
            "pipeline_16": median(rounds["redis_benchmark_p16"]),
        },
        "engine_vs_redis": round_ratio(engine, top),
        "command": " ".join(reserve_command(ctx)),
        "rounds": rounds,
    }
