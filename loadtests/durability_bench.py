"""Reservations per second in each durability mode, side by side in one run.

    python loadtests/durability_bench.py [--seconds 5] [--rounds 3] [--concurrency 64] [--dir DIR]

For each mode a private ``redis-server`` (``/usr/bin/redis-server``, else the one on
PATH) is started with its data in ``--dir`` (default: a temporary directory under
/var/tmp, on disk, so fsync costs what it costs): AOF off, AOF ``everysec``
(``fast``) and AOF ``always`` (``strict``; on Redis >= 7.2 with ``everysec`` the
script would use WAITAOF instead). Rounds alternate the modes so that whatever
else the machine does weighs on all of them alike; the median round is reported.
The load is the engine itself (the API's multiplexed connection, 64 reservations
in flight), not HTTP: this measures what durability costs, not the web server.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import redis

from flashstock.durability import prepare
from flashstock.engine import Engine
from flashstock.redis_client import create_async, multiplexed
from flashstock.settings import Settings

MODES = {"AOF off": None, "fast (AOF everysec)": "everysec", "strict (AOF always)": "always"}


def start_redis(directory: Path, appendfsync: str | None, port: int) -> subprocess.Popen[bytes]:
    binary = "/usr/bin/redis-server" if os.path.exists("/usr/bin/redis-server") else "redis-server"
    aof = (
        ["--appendonly", "yes", "--appendfsync", appendfsync]
        if appendfsync
        else ["--appendonly", "no"]
    )
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(directory), "--save", "", *aof],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    for _ in range(500):
        try:
            if redis.Redis(port=port).ping():
                return proc
        except redis.RedisError:
            time.sleep(0.01)
    raise RuntimeError("redis-server did not start")


async def measure(
    port: int, strict: bool, seconds: float, concurrency: int, tag: str
) -> dict[str, float]:
    url = f"redis://127.0.0.1:{port}/0"
    settings = Settings(key_prefix="bench", redis_url=url, database_url="sqlite://",
                        durability="strict" if strict else "fast")  # fmt: skip
    plain = create_async(url, "bench")
    engine = Engine(multiplexed(create_async(url, "bench"), url, "bench"), settings)
    engine.durable = await prepare(settings, plain)
    for i in range(50):
        await engine.set_on_hand(f"S{i}", "default", 1_000_000)
    done, lat = 0, []
    stop = time.monotonic() + seconds

    async def buyer(me: int) -> None:
        nonlocal done
        n = 0
        while time.monotonic() < stop:
            n += 1
            t = time.perf_counter()
            await engine.reserve([(f"S{(me + n) % 50}", 1)], reservation_id=f"{tag}-{me}-{n}")
            lat.append(time.perf_counter() - t)
            done += 1

    t0 = time.monotonic()
    await asyncio.gather(*(buyer(i) for i in range(concurrency)))
    elapsed = time.monotonic() - t0
    await engine.redis.aclose()
    await plain.aclose()
    lat.sort()
    return {"rps": done / elapsed, "p50_ms": lat[len(lat) // 2] * 1000,
            "p99_ms": lat[int(len(lat) * 0.99)] * 1000}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--dir", default=None)
    args = ap.parse_args()
    root = Path(args.dir or tempfile.mkdtemp(prefix="flashstock-bench-", dir="/var/tmp"))
    results: dict[str, list[dict[str, float]]] = {m: [] for m in MODES}
    version = subprocess.run(["/usr/bin/redis-server" if os.path.exists("/usr/bin/redis-server")
                              else "redis-server", "--version"], capture_output=True, text=True).stdout.split()[2]  # fmt: skip
    try:
        for r in range(args.rounds):
            for i, (mode, fsync) in enumerate(MODES.items()):
                d = root / f"r{r}-{i}"
                d.mkdir(parents=True)
                port = 20000 + (os.getpid() % 10000) + i
                proc = start_redis(d, fsync, port)
                try:
                    results[mode].append(asyncio.run(measure(
                        port, fsync == "always", args.seconds, args.concurrency, f"r{r}")))  # fmt: skip
                finally:
                    proc.terminate()
                    proc.wait()
    finally:
        if args.dir is None:
            shutil.rmtree(root, ignore_errors=True)
    out = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "redis": version,
                       "disk": str(root)}, "settings": vars(args), "modes": {}}  # fmt: skip
    for mode, runs in results.items():
        med = statistics.median(r["rps"] for r in runs)
        best = min(runs, key=lambda r: abs(r["rps"] - med))
        out["modes"][mode] = {"reservations_per_s": round(med), "p50_ms": round(best["p50_ms"], 2),
                              "p99_ms": round(best["p99_ms"], 2),
                              "rounds": [round(r["rps"]) for r in runs]}  # fmt: skip
    json.dump(out, sys.stdout, indent=2)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
