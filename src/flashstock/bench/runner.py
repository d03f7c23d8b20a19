"""Runs the suite: private services, each measurement, then the JSON, the plot and the table."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from flashstock.bench import ceiling, http, ledger, postgres, report, soldout
from flashstock.bench.common import Ctx
from flashstock.bench.load import have_wrk
from flashstock.bench.services import PgDatabase, PrivateRedis

SECTIONS = ("http", "ceiling", "postgres", "sold_out", "ledger", "shape")
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"


def machine() -> dict[str, Any]:
    def first(cmd: list[str]) -> str:
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
            return (out.stdout or out.stderr).strip().splitlines()[0]
        except (OSError, IndexError, subprocess.TimeoutExpired):
            return "-"

    mem = "-"
    model = platform.processor() or "-"
    try:
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f"{kb / 1024 / 1024:.1f} GiB"
        model = next(
            (ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
             if ln.startswith("model name")), model,
        )  # fmt: skip
    except OSError:
        pass
    import fastapi
    import redis
    import uvicorn

    return {
        "nproc": os.cpu_count(),
        "cpu": model,
        "memory": mem,
        "os": platform.platform(),
        "python": platform.python_version(),
        "uvicorn": uvicorn.__version__,
        "fastapi": fastapi.__version__,
        "redis_py": redis.__version__,
        "wrk": first(["wrk", "-v"]) if have_wrk() else "not installed",
        "commit": first(["git", "rev-parse", "--short", "HEAD"]),
    }


def run(
    out: Path,
    *,
    sections: tuple[str, ...] = SECTIONS,
    duration: float = 5.0,
    rounds: int = 3,
    connections: int = 64,
    workers: int = 2,
    generator: str = "auto",
    pg_admin_url: str = PG_ADMIN,
    command: str = "flashstock bench",
    echo: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run ``sections`` and write ``results.json``, ``plot.png`` and ``table.md`` under ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    started = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    red = PrivateRedis().start()
    needs_pg = any(s in sections for s in ("postgres", "ledger"))
    pg = PgDatabase(pg_admin_url).create() if needs_pg else None
    ctx = Ctx(red, pg, out, duration=duration, rounds=rounds, generator=generator,
              connections=connections, workers=workers)  # fmt: skip
    m = machine()
    m["redis"] = red.version()
    m["load_before"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    if pg is not None:
        m["postgres"] = pg.server_facts()
    results: dict[str, Any] = {}
    run_: dict[str, Any] = {
        "started_at": started,
        "command": command,
        "machine": m,
        "options": {"duration_s": duration, "rounds": rounds, "connections": connections,
                    "workers": workers, "sections": list(sections),
                    "generator_used": "wrk" if generator != "python" and have_wrk() else "python"},
        "results": results,
    }  # fmt: skip

    def step(name: str, fn: Callable[[], Any]) -> None:
        echo(f"bench: {name} …")
        t0 = time.monotonic()
        try:
            results[name] = fn()
        except Exception as exc:  # noqa: BLE001 - one failed measurement must not lose the others
            results[name] = {"error": f"{type(exc).__name__}: {exc}"}
            echo(f"bench: {name} failed: {exc}")
        echo(f"bench: {name} done in {time.monotonic() - t0:.0f}s")
        report.write_json(run_, out / "results.json")

    try:
        if "http" in sections:
            step("http", lambda: http.overhead(ctx, workers))
            if workers != 1:
                step("http_1_worker", lambda: http.overhead(ctx, 1))
        if "ceiling" in sections:
            step("ceiling", lambda: ceiling.ceiling(ctx))
        if "sold_out" in sections:
            step("sold_out", lambda: soldout.rates(ctx))
            step("sold_out_bound", lambda: soldout.bound(ctx))
        if "postgres" in sections:
            step("postgres", lambda: postgres.compare(ctx))
        if "ledger" in sections:
            step("ledger_lag", lambda: ledger.lag(ctx))
            peak = results.get("http", {}).get("reserve", {}).get("rps") or results[
                "ledger_lag"
            ].get("reserve_rps", 0)
            step("drain", lambda: ledger.drain(ctx, peak))
            step("drain_2_workers", lambda: ledger.drain(ctx, peak, workers=2))
        if "shape" in sections:
            step("shape", lambda: http.shape(ctx))
            step("memory", lambda: http.memory_per_hold(ctx))
    finally:
        red.stop()
        if pg is not None:
            pg.drop()
    m["load_after"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    run_["goals"] = report.goals(results)
    report.write_json(run_, out / "results.json")
    if report.plot(run_, out / "plot.png"):
        run_["plot"] = str(out / "plot.png")
    else:
        echo("bench: no plot (pip install 'flashstock[bench]' for matplotlib)")
    (out / "table.md").write_text(report.markdown(run_))
    echo(report.markdown(run_))
    echo(f"bench: results in {out}")
    return run_


def main(argv: list[str] | None = None) -> None:
    """``python -m flashstock.bench`` without the CLI: all sections, default options."""
    out = Path("bench-results") / datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    run(out, command="python -m flashstock.bench " + " ".join(argv or sys.argv[1:]))
