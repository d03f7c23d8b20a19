"""The whole flash-sale load test in one command, against real Redis and PostgreSQL.

    python loadtests/run_flash_sale.py [--users 200] [--spawn-rate 50] [--duration 60s]

1. creates a fresh database ``flashstock_load_<random>`` and runs ``flashstock db upgrade``;
   all Redis keys live under a fresh prefix ``load<random>``;
2. warms the real exports ``../shared/data/shopify-inventory-2024-nsls/inventory_export_1.csv``
   and ``../shared/data/woocommerce/sample.csv`` (a small generated catalog when
   ``../shared/data`` is absent);
3. starts ``flashstock serve --workers 2`` and ``flashstock worker``;
4. opens the sale: a few hot skus from those files get a modest on_hand
   (``PUT /v1/stock/{sku}/{location}``) so they sell out during the run; one gets
   a per-customer limit; a backorder item with no limit gets one;
5. runs ``locust --headless`` with ``--csv`` output;
6. runs ``loadtests/check.py`` (API and worker still up: the worker persists
   the last carts' expiry), stops the servers, reconciles once more, and prints
   requests/s, p50/p99, refusals and failures.

On exit (also on Ctrl-C) it stops what it started, drops its database and
deletes its Redis keys, unless ``--keep``. Output (CSVs, logs, summary.json)
goes to ``loadtests/results/<time>/``. Exit status 0 only when the check passed
and locust recorded no failure.

Environment: ``FLASHSTOCK_LOAD_REDIS_URL`` (redis://127.0.0.1:6379/0),
``FLASHSTOCK_LOAD_PG`` (postgresql://postgres@127.0.0.1:5432, the server the
database is created on), ``FLASHSTOCK_HOT_SKUS`` to choose the hot skus yourself,
and the scenario's ``FLASHSTOCK_LOAD_*`` options (see loadtests/locustfile.py).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

ROOT = Path(__file__).resolve().parent.parent
DATA_FILES = (
    "shopify-inventory-2024-nsls/inventory_export_1.csv",
    "woocommerce/sample.csv",
)
# Skus that are safe in a URL path segment as they are (no quoting surprises in reports).
PLAIN_SKU = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


def say(*parts: object) -> None:
    sys.stdout.write(" ".join(str(p) for p in parts) + "\n")
    sys.stdout.flush()


def flashstock_cmd(*args: str) -> list[str]:
    exe = shutil.which("flashstock") or str(Path(sys.executable).with_name("flashstock"))
    if os.path.exists(exe):
        return [exe, *args]
    return [sys.executable, "-m", "flashstock.cli", *args]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- HTTP -----------------------------------------------------------------------------------


def http(method: str, url: str, body: Any = None, timeout: float = 10.0) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        try:
            return exc.code, json.loads(raw)
        except ValueError:
            return exc.code, raw.decode(errors="replace")


def wait_ready(base: str, procs: list[subprocess.Popen[bytes]], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        for p in procs:
            if p.poll() is not None:
                raise RuntimeError(
                    f"{p.args!r} exited with {p.returncode} before the API was ready"
                )
        try:
            status, last = http("GET", f"{base}/readyz", timeout=3)
            if status == 200:
                return
        except (urllib.error.URLError, OSError) as exc:
            last = exc
        time.sleep(0.3)
    raise RuntimeError(f"API not ready after {timeout:.0f}s: {last}")


# -- the run --------------------------------------------------------------------------------


@dataclass
class Run:
    args: argparse.Namespace
    out: Path
    suffix: str = field(default_factory=lambda: secrets.token_hex(4))
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    db_created: bool = False
    cleaned: bool = False

    @property
    def db_name(self) -> str:
        return f"flashstock_load_{self.suffix}"

    @property
    def prefix(self) -> str:
        return f"load{self.suffix}"

    @property
    def pg(self) -> Any:
        return urlsplit(self.args.pg)

    @property
    def database_url(self) -> str:
        return f"{self.args.pg.rstrip('/')}/{self.db_name}"

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("FLASHSTOCK_")}
        env.update(
            FLASHSTOCK_REDIS_URL=self.args.redis_url,
            FLASHSTOCK_DATABASE_URL=self.database_url,
            FLASHSTOCK_KEY_PREFIX=self.prefix,
        )
        # The scenario's options pass through.
        env.update({k: v for k, v in os.environ.items() if k.startswith("FLASHSTOCK_LOAD_")})
        env.update(extra)
        return env

    def pg_args(self) -> list[str]:
        pg = self.pg
        return ["-h", pg.hostname or "127.0.0.1", "-p", str(pg.port or 5432),
                "-U", pg.username or "postgres"]  # fmt: skip

    def run(
        self, cmd: list[str], log: str | None = None, **kw: Any
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=self.env(), cwd=ROOT, **kw)
        if log:
            (self.out / log).write_text(proc.stdout + proc.stderr)
        return proc

    def start(self, name: str, cmd: list[str], **extra: str) -> subprocess.Popen[bytes]:
        logf = open(self.out / f"{name}.log", "wb")  # noqa: SIM115 - lives as long as the process
        proc = subprocess.Popen(
            cmd, stdout=logf, stderr=subprocess.STDOUT, env=self.env(**extra), cwd=ROOT,
            start_new_session=True,  # its own process group: uvicorn's workers stop with it
        )  # fmt: skip
        self.procs[name] = proc
        return proc

    def stop(self, name: str, timeout: float = 20.0) -> int | None:
        proc = self.procs.pop(name, None)
        if proc is None:
            return None
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                say(f"  {name} did not stop within {timeout:.0f}s; killing it")
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            except ProcessLookupError:
                pass
        return proc.returncode

    def cleanup(self) -> None:
        if self.cleaned:
            return
        self.cleaned = True
        for name in list(self.procs):
            self.stop(name, timeout=10)
        if self.args.keep:
            say(f"kept: database {self.db_name}, Redis keys {self.prefix}:*")
            return
        if self.db_created:
            proc = subprocess.run(
                ["dropdb", *self.pg_args(), "--if-exists", "--force", self.db_name],
                capture_output=True, text=True,
            )  # fmt: skip
            if proc.returncode != 0:
                say(f"cleanup: dropdb {self.db_name} failed: {proc.stderr.strip()}")
        self.delete_keys()

    def delete_keys(self) -> None:
        import redis

        client = redis.Redis.from_url(self.args.redis_url)
        try:
            n = 0
            batch: list[bytes] = []
            for key in client.scan_iter(match=f"{self.prefix}:*", count=1000):
                batch.append(key)
                if len(batch) >= 500:
                    n += client.unlink(*batch)
                    batch.clear()
            if batch:
                n += client.unlink(*batch)
            say(
                f"cleanup: dropped database {self.db_name}, deleted {n} Redis key(s) {self.prefix}:*"
            )
        except redis.RedisError as exc:
            say(f"cleanup: could not delete Redis keys {self.prefix}:*: {exc}")
        finally:
            client.close()


def generated_catalog(path: Path, n: int = 40) -> Path:
    """A small generic stock file, for machines without ../shared/data."""
    rows = ["sku,location,on_hand"]
    rows += [f"GEN-{i:04d},default,{50 + 10 * i}" for i in range(n)]
    path.write_text("\n".join(rows) + "\n")
    return path


def warm_files(run: Run) -> tuple[list[Path], list[dict[str, Any]]]:
    data = Path(run.args.data_dir)
    files = [data / f for f in DATA_FILES]
    if not data.is_dir():
        say(f"warm: {data} not found; skipping the real exports, warming a generated catalog")
        files = [generated_catalog(run.out / "generated_catalog.csv")]
    else:
        missing = [f for f in files if not f.is_file()]
        for f in missing:
            say(f"warm: {f} not found; skipped")
        files = [f for f in files if f.is_file()] or [
            generated_catalog(run.out / "generated_catalog.csv")
        ]
    reports = []
    for i, f in enumerate(files):
        proc = run.run(flashstock_cmd("warm", str(f)), log=f"warm_{i}.log")
        text = (proc.stdout + proc.stderr).strip()
        say(f"warm {f} (exit {proc.returncode}):")
        for line in text.splitlines()[:12]:
            say(f"  {line}")
        if proc.returncode != 0:
            raise RuntimeError(f"flashstock warm {f} failed")
        reports.append({"file": str(f), "exit": proc.returncode, "output": text})
    return files, reports


def pick_hot_skus(files: list[Path], per_file: list[int]) -> list[tuple[str, str]]:
    """(sku, location) of the hot skus: the best-stocked plain skus of each file."""
    from flashstock.stockfiles import parse_stock_file

    chosen: list[tuple[str, str]] = []
    for f, n in zip(files, per_file, strict=False):
        rows = [r for r in parse_stock_file(f.read_bytes()).rows
                if r.on_hand and PLAIN_SKU.match(r.sku)]  # fmt: skip
        rows.sort(key=lambda r: (-(r.on_hand or 0), r.sku))
        for r in rows:
            if len([c for c in chosen if c[0] == r.sku]) == 0 and n > 0:
                chosen.append((r.sku, r.location))
                n -= 1
    return chosen


def open_sale(run: Run, base: str, hot: list[tuple[str, str | None]]) -> dict[str, Any]:
    """Give each hot sku its sale stock and policy; returns what the check needs."""
    a = run.args
    stocked: dict[str, Any] = {}
    for i, (sku, loc) in enumerate(hot):
        status, stock = http("GET", f"{base}/v1/stock/{quote(sku, safe='')}")
        if status != 200:
            raise RuntimeError(f"hot sku {sku!r} is not in the store: {status} {stock}")
        locations = [lv["location"] for lv in stock["locations"]] or [loc or "default"]
        target = loc if loc in locations else locations[0]
        for where in locations:
            units = a.stock if where == target else 0
            status, body = http(
                "PUT", f"{base}/v1/stock/{quote(sku, safe='')}/{quote(where, safe='')}",
                {"on_hand": units, "adjustment_id": f"sale-open-{run.suffix}-{sku}-{where}"},
            )  # fmt: skip
            if status != 200:
                raise RuntimeError(f"PUT stock {sku}@{where}: {status} {body}")
        policy = {k: v for k, v in stock["policy"].items() if v is not None and k != "locations"}
        changed = False
        if policy.get("backorder", "deny") != "deny" and policy.get("backorder_limit") is None:
            policy["backorder_limit"] = a.backorder_limit  # an unlimited backorder never sells out
            changed = True
        if i == 0 and a.customer_limit > 0:
            policy["per_customer_limit"] = a.customer_limit
            changed = True
        if changed:
            status, body = http("PUT", f"{base}/v1/items/{quote(sku, safe='')}", policy)
            if status != 200:
                raise RuntimeError(f"PUT item {sku}: {status} {body}")
        status, stock = http("GET", f"{base}/v1/stock/{quote(sku, safe='')}")
        stocked[sku] = {"on_hand": stock["total"]["on_hand"], "location": target,
                        "policy": stock["policy"]}  # fmt: skip
        pol = ", ".join(f"{k}={v}" for k, v in stock["policy"].items()
                        if v is not None and k != "locations")  # fmt: skip
        say(f"  {sku} @ {target}: on_hand {stock['total']['on_hand']}  ({pol})")
    return stocked


# -- report ---------------------------------------------------------------------------------


def read_stats(prefix: Path) -> dict[str, Any]:
    # The final figures the scenario writes at exit; locust's own CSV is a 1 s snapshot.
    stats_path = Path(f"{prefix}_final_stats.csv")
    if not stats_path.exists():
        stats_path = Path(f"{prefix}_stats.csv")
    rows = list(csv.DictReader(stats_path.open())) if stats_path.exists() else []
    fail_path = Path(f"{prefix}_final_failures.csv")
    if not fail_path.exists():
        fail_path = Path(f"{prefix}_failures.csv")
    failures = list(csv.DictReader(fail_path.open())) if fail_path.exists() else []
    groups = []
    for r in rows:
        groups.append({
            "type": r["Type"], "name": r["Name"],
            "requests": int(r["Request Count"]), "failures": int(r["Failure Count"]),
            "rps": float(r["Requests/s"]), "p50": r["50%"], "p99": r["99%"],
            "max": r["Max Response Time"],
        })  # fmt: skip
    return {"groups": groups, "failures": failures, "sold_out_after_s": sold_out_after(prefix)}


def sold_out_after(prefix: Path) -> float | None:
    """Seconds from the first request to the first ``insufficient_stock`` refusal."""
    path = Path(f"{prefix}_stats_history.csv")
    if not path.exists():
        return None
    start = first = None
    for r in csv.DictReader(path.open()):
        ts = float(r["Timestamp"])
        if start is None and int(r["Total Request Count"] or 0) > 0:
            start = ts
        if "[refused: insufficient_stock]" in r["Name"] and int(r["Total Request Count"] or 0) > 0:
            first = ts if first is None else min(first, ts)
    return None if start is None or first is None else first - start


def print_stats(stats: dict[str, Any]) -> None:
    say(f"{'group':<66} {'requests':>9} {'fail':>6} {'req/s':>8} {'p50 ms':>7} {'p99 ms':>7}")
    for g in stats["groups"]:
        label = "all requests" if g["name"] == "Aggregated" else g["name"]
        say(f"{label[:66]:<66} {g['requests']:>9} {g['failures']:>6} {g['rps']:>8.1f} "
            f"{g['p50']:>7} {g['p99']:>7}")  # fmt: skip
    refusals: dict[str, int] = {}
    for g in stats["groups"]:
        m = re.search(r"\[refused: (\w+)\]", g["name"])
        if m:
            key = f"409 {m.group(1)} ({g['name'].split(' [')[0]})"
            refusals[key] = refusals.get(key, 0) + g["requests"]
    say("refusals (expected during the sell-out, counted as successes):")
    for k, n in sorted(refusals.items()):
        say(f"  {n:>8}  {k}")
    if not refusals:
        say("  none")
    if stats.get("sold_out_after_s") is not None:
        say(
            f"first insufficient_stock refusal {stats['sold_out_after_s']:.0f}s after the first request"
        )
    say(f"failures: {sum(int(f['Occurrences']) for f in stats['failures'])}")
    for f in stats["failures"][:20]:
        say(f"  {f['Occurrences']:>6}x {f['Method']} {f['Name']}: {f['Error'][:160]}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--users", type=int, default=200)
    ap.add_argument("--spawn-rate", type=int, default=50)
    ap.add_argument("--duration", default="60s", help="locust --run-time")
    ap.add_argument("--api-workers", type=int, default=2)
    ap.add_argument("--stock", type=int, default=300, help="units of each hot sku at the opening")
    ap.add_argument("--hot-per-file", default="3,1",
                    help="hot skus taken from each data file, in order")  # fmt: skip
    ap.add_argument("--customer-limit", type=int, default=4,
                    help="per-customer limit put on the first hot sku (0: none)")  # fmt: skip
    ap.add_argument("--backorder-limit", type=int, default=10,
                    help="limit given to a hot backorder item that has none")  # fmt: skip
    ap.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data"))
    ap.add_argument("--redis-url",
                    default=os.environ.get("FLASHSTOCK_LOAD_REDIS_URL", "redis://127.0.0.1:6379/0"))  # fmt: skip
    ap.add_argument("--pg", default=os.environ.get("FLASHSTOCK_LOAD_PG", "postgresql://postgres@127.0.0.1:5432"),
                    help="PostgreSQL server URL (no database) to create the run's database on")  # fmt: skip
    ap.add_argument("--out", help="output directory (default loadtests/results/<time>)")
    ap.add_argument("--keep", action="store_true", help="keep the database and Redis keys")
    args = ap.parse_args(argv)

    out = Path(args.out or ROOT / "loadtests" / "results" / time.strftime("%Y%m%d-%H%M%S"))
    out.mkdir(parents=True, exist_ok=True)
    run = Run(args, out)

    def on_signal(signum: int, _frame: Any) -> None:
        say(f"\nsignal {signum}: cleaning up")
        run.cleanup()
        sys.exit(130)

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        return _main(run)
    except RuntimeError as exc:
        say(f"run failed: {exc}")
        return 2
    finally:
        run.cleanup()


def _main(run: Run) -> int:
    a, out = run.args, run.out
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    say(f"flash sale: {a.users} users, spawn {a.spawn_rate}/s, {a.duration}; output {out}")
    say(f"database {run.db_name}, Redis {a.redis_url} keys {run.prefix}:*")

    proc = subprocess.run(["createdb", *run.pg_args(), run.db_name], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"createdb {run.db_name}: {proc.stderr.strip()}")
    run.db_created = True
    proc = run.run(flashstock_cmd("db", "upgrade"), log="db_upgrade.log")
    if proc.returncode != 0:
        raise RuntimeError(f"flashstock db upgrade failed:\n{proc.stdout}{proc.stderr}")
    say(proc.stdout.strip())

    files, warm_reports = warm_files(run)

    if os.environ.get("FLASHSTOCK_HOT_SKUS"):
        hot: list[tuple[str, str | None]] = [
            (s.strip(), None) for s in os.environ["FLASHSTOCK_HOT_SKUS"].split(",") if s.strip()
        ]
    else:
        per_file = [int(n) for n in a.hot_per_file.split(",")]
        if len(files) == 1 and files[0].name == "generated_catalog.csv":
            per_file = [sum(per_file)]
        hot = list(pick_hot_skus(files, per_file))
    if not hot:
        raise RuntimeError("no hot skus found")

    serve = run.start("serve", flashstock_cmd("serve", "--host", "127.0.0.1", "--port", str(port),
                                              "--workers", str(a.api_workers)))  # fmt: skip
    worker = run.start("worker", flashstock_cmd("worker"))
    wait_ready(base, [serve, worker])
    say(f"API ready at {base} ({a.api_workers} workers); ledger worker running")

    say("opening the sale:")
    stocked = open_sale(run, base, hot)
    (out / "hot_skus.json").write_text(json.dumps(list(stocked), indent=2))
    (out / "stocked.json").write_text(json.dumps(stocked, indent=2))

    csv_prefix = out / "flash_sale"
    tally = out / "tally.json"
    ttl = int(os.environ.get("FLASHSTOCK_LOAD_TTL_SECONDS", "15"))
    locust_cmd = [
        shutil.which("locust") or str(Path(sys.executable).with_name("locust")),
        "-f", str(ROOT / "loadtests" / "locustfile.py"), "--headless",
        "-u", str(a.users), "-r", str(a.spawn_rate), "-t", a.duration,
        "--host", base, "--csv", str(csv_prefix), "--csv-full-history", "--only-summary",
    ]  # fmt: skip
    say("$ " + " ".join(locust_cmd))
    started = time.monotonic()
    with open(out / "locust.log", "wb") as logf:
        locust = subprocess.run(
            locust_cmd, stdout=logf, stderr=subprocess.STDOUT, cwd=ROOT,
            env=run.env(FLASHSTOCK_HOT_SKUS_FILE=str(out / "hot_skus.json"),
                        FLASHSTOCK_LOAD_TALLY=str(tally)),
        )  # fmt: skip
    elapsed = time.monotonic() - started
    say(f"locust exit {locust.returncode} after {elapsed:.0f}s")
    for name in ("serve", "worker"):
        if run.procs[name].poll() is not None:
            say(
                f"warning: {name} exited during the run ({run.procs[name].returncode}); see {name}.log"
            )

    say("check (API and worker still up):")
    check_cmd = [
        sys.executable, "-m", "loadtests.check", "--host", base,
        "--skus-file", str(out / "hot_skus.json"), "--stocked", str(out / "stocked.json"),
        "--tally", str(tally), "--settle", str(ttl + 15), "--reconcile-timeout", "120", "--all-skus",
    ]  # fmt: skip
    check = subprocess.run(check_cmd, capture_output=True, text=True, env=run.env(), cwd=ROOT)
    (out / "check.log").write_text(check.stdout + check.stderr)
    for line in (check.stdout + check.stderr).strip().splitlines():
        say(f"  {line}")

    say("stopping the API and the worker (the worker drains on SIGTERM)")
    serve_rc = run.stop("serve")
    worker_rc = run.stop("worker", timeout=60)
    final = run.run(flashstock_cmd("reconcile"), log="reconcile_after_stop.log")
    final_text = (final.stdout + final.stderr).strip().splitlines()
    say(f"reconcile after shutdown: exit {final.returncode}: {final_text[0] if final_text else ''}")

    stats = read_stats(csv_prefix)
    say("")
    say(f"locust figures ({a.users} users, {a.duration}):")
    print_stats(stats)
    failures = sum(g["failures"] for g in stats["groups"] if g["name"] == "Aggregated")
    summary = {
        "users": a.users, "spawn_rate": a.spawn_rate, "duration": a.duration,
        "elapsed_s": round(elapsed, 1), "api_workers": a.api_workers, "stock_per_sku": a.stock,
        "database": run.db_name, "key_prefix": run.prefix, "hot": stocked,
        "warm": warm_reports, "stats": stats,
        "tally": json.loads(tally.read_text()) if tally.exists() else None,
        "locust_exit": locust.returncode, "check_exit": check.returncode,
        "check_output": check.stdout, "serve_exit": serve_rc, "worker_exit": worker_rc,
        "reconcile_after_stop_exit": final.returncode,
    }  # fmt: skip
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    ok = check.returncode == 0 and final.returncode == 0 and failures == 0 and stats["groups"]
    say(f"result: {'PASS' if ok else 'FAIL'} (check exit {check.returncode}, reconcile after "
        f"shutdown exit {final.returncode}, {failures} failed request(s)); details in {out}")  # fmt: skip
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
