"""The invariant check after a load test: nothing oversold, Redis and the ledger agree.

Run it while the API and ``flashstock worker`` are still up (the worker must
persist the ``expired`` events of the last carts), with the same
``FLASHSTOCK_*`` environment as the servers::

    python -m loadtests.check --host http://127.0.0.1:8000 [--skus a,b | --all-skus]
        [--stocked stocked.json] [--tally tally.json] [--settle 30] [--reconcile-timeout 60]

For every sku (the hot skus from ``--skus``, ``FLASHSTOCK_HOT_SKUS`` or
``FLASHSTOCK_HOT_SKUS_FILE``; every sku in Redis with ``--all-skus``) it reads
``GET /v1/stock/{sku}`` and checks SPEC §2 on each level: no field below zero,
``available`` consistent, never below the item's floor (0 for ``deny``,
``-backorder_limit`` otherwise). Units sold (committed + shipped) must not
exceed units stocked (``--stocked``: the on_hand each sku had when the sale
opened; without it the current on_hand, i.e. nothing shipped), and the units
locust saw committed (``--tally``) must all be counted as sold. Then it runs
``flashstock reconcile`` until Redis and the ledger agree or the timeout passes.

Exit status: 0 all invariants hold, 1 a violation, 2 the check could not run.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

if __package__ in (None, ""):  # run as a file: make ``loadtests`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from loadtests.scenarios.config import hot_skus, parse_sku_file  # noqa: E402
from loadtests.scenarios.invariants import floor_of, level_violations  # noqa: E402

MAX_ROWS = 50


def say(*parts: object) -> None:
    sys.stdout.write(" ".join(str(p) for p in parts) + "\n")
    sys.stdout.flush()


class Unreachable(RuntimeError):
    pass


def get_stock(host: str, sku: str, timeout: float = 10.0) -> dict[str, Any]:
    url = f"{host.rstrip('/')}/v1/stock/{quote(sku, safe='')}"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return json.loads(resp.read())  # type: ignore[no-any-return]
    except urllib.error.HTTPError as exc:
        raise Unreachable(f"GET {url}: {exc.code} {exc.read()[:300]!r}") from exc
    except (urllib.error.URLError, OSError) as exc:
        raise Unreachable(f"GET {url}: {exc}") from exc


def skus_in_redis() -> list[str]:
    """Every sku Redis knows, from each partition's ``skus`` set (same settings as the servers)."""
    from flashstock.keys import Keys
    from flashstock.redis_client import create_sync
    from flashstock.settings import Settings

    s = Settings()
    if not s.redis_url:
        raise Unreachable("--all-skus needs FLASHSTOCK_REDIS_URL")
    client = create_sync(s.redis_url, "loadcheck")
    try:
        found: set[str] = set()
        for p in range(s.partitions):
            for member in client.sscan_iter(Keys(s.key_prefix, p).skus, count=1000):
                found.add(member.decode() if isinstance(member, bytes) else member)
        return sorted(found)
    finally:
        client.close()


def read_tally(path: str) -> dict[str, int]:
    """Units seen committed per sku, summed over ``path`` and its per-process ``path.*``."""
    units: dict[str, int] = {}
    for name in [path, *sorted(glob.glob(glob.escape(path) + ".*"))]:
        if not os.path.exists(name):
            continue
        for sku, n in json.loads(Path(name).read_text())["committed_units"].items():
            units[sku] = units.get(sku, 0) + int(n)
    return units


@dataclass
class Report:
    rows: list[str] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)


def check_skus(
    host: str, skus: list[str], stocked: dict[str, int], seen: dict[str, int] | None
) -> Report:
    rep = Report()
    for sku in skus:
        stock = get_stock(host, sku)
        rep.violations += level_violations(stock)
        total = stock["total"]
        policy = stock.get("policy") or {}
        floor = floor_of(policy)
        on_hand_now = total["on_hand"]
        units = stocked.get(sku, on_hand_now)
        shipped = max(0, units - on_hand_now) if sku in stocked else 0
        sold = total["committed"] + shipped
        # Backorders may sell past the stock, by at most the limit (none when unlimited).
        allowed = None if floor is None else units - floor
        if allowed is not None and sold > allowed:
            rep.violations.append(f"{sku}: OVERSOLD, {sold} units sold > {allowed} allowed "
                                  f"({units} stocked, backorder {policy.get('backorder')})")  # fmt: skip
        client_seen = None if seen is None else seen.get(sku, 0)
        if client_seen is not None and client_seen > sold:
            rep.violations.append(f"{sku}: buyers were told {client_seen} units were ordered, "
                                  f"but only {sold} are counted as sold")  # fmt: skip
        rep.rows.append(
            f"{sku[:40]:<40} {policy.get('backorder', 'deny'):<6} {units:>7} {sold:>6} "
            f"{'-' if client_seen is None else client_seen:>6} {total['reserved']:>8} "
            f"{total['available']:>9}"
        )
    return rep


def wait_settled(host: str, skus: list[str], timeout: float) -> int:
    """Wait until no hot sku has units on hold (carts committed, released or expired)."""
    deadline = time.monotonic() + timeout
    while True:
        held = sum(get_stock(host, s)["total"]["reserved"] for s in skus)
        if held == 0 or time.monotonic() >= deadline:
            return held
        time.sleep(1.0)


def reconcile_command() -> list[str]:
    exe = shutil.which("flashstock")
    return [exe, "reconcile"] if exe else [sys.executable, "-m", "flashstock.cli", "reconcile"]


def reconcile_until_clean(timeout: float, interval: float = 2.0) -> tuple[bool, int, str, float]:
    """Run ``flashstock reconcile`` until it exits 0 or ``timeout`` passes.

    Returns (clean, last exit code, last output, seconds waited).
    """
    start = time.monotonic()
    while True:
        proc = subprocess.run(
            reconcile_command(), capture_output=True, text=True, timeout=max(timeout, 30)
        )
        waited = time.monotonic() - start
        out = (proc.stdout + proc.stderr).strip()
        if proc.returncode == 0:
            return True, 0, out, waited
        if proc.returncode != 1 or waited >= timeout:  # 1 = differences; anything else = broken
            return False, proc.returncode, out, waited
        time.sleep(interval)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m loadtests.check", description=__doc__.split("\n")[0]
    )
    ap.add_argument(
        "--host", default=os.environ.get("FLASHSTOCK_LOAD_HOST", "http://127.0.0.1:8000")
    )
    ap.add_argument("--skus", help="comma-separated skus (default: FLASHSTOCK_HOT_SKUS[_FILE])")
    ap.add_argument("--skus-file", help="file of skus (one per line, or JSON)")
    ap.add_argument("--all-skus", action="store_true", help="also check every other sku in Redis")
    ap.add_argument("--stocked", help="JSON {sku: units on hand when the sale opened}")
    ap.add_argument("--tally", help="units locust saw committed (FLASHSTOCK_LOAD_TALLY)")
    ap.add_argument("--settle", type=float, default=0.0,
                    help="seconds to wait for open carts to end before judging")  # fmt: skip
    ap.add_argument("--reconcile-timeout", type=float, default=60.0)
    ap.add_argument("--no-reconcile", action="store_true")
    args = ap.parse_args(argv)

    try:
        if args.skus:
            listed = [s.strip() for s in args.skus.split(",") if s.strip()]
        elif args.skus_file:
            listed = parse_sku_file(args.skus_file)
        else:
            listed = hot_skus()
        others = [s for s in skus_in_redis() if s not in set(listed)] if args.all_skus else []
        if not listed and not others:
            say("check: no skus to check (give --skus, --all-skus or FLASHSTOCK_HOT_SKUS)")
            return 2
        stocked: dict[str, int] = {}
        if args.stocked:
            raw = json.loads(Path(args.stocked).read_text())
            stocked = {k: int(v["on_hand"] if isinstance(v, dict) else v) for k, v in raw.items()}
        seen = read_tally(args.tally) if args.tally else None

        if args.settle > 0 and listed:
            held = wait_settled(args.host, listed, args.settle)
            if held:
                say(f"check: {held} unit(s) still on hold after {args.settle:.0f}s (judged anyway)")
        rep = check_skus(args.host, listed, stocked, seen)
        rest = check_skus(args.host, others, stocked, None)
    except Unreachable as exc:
        say(f"check: cannot read stock: {exc}")
        return 2
    rep.violations += rest.violations
    skus = listed + others

    say(f"{'sku':<40} {'policy':<6} {'stocked':>7} {'sold':>6} {'seen':>6} {'reserved':>8} "
        f"{'available':>9}")  # fmt: skip
    shown = rep.rows or rest.rows
    for row in shown[:MAX_ROWS]:
        say(row)
    if len(shown) > MAX_ROWS:
        say(f"… and {len(shown) - MAX_ROWS} more")
    if rep.rows and others:
        say(f"(and {len(others)} other sku(s) in Redis, checked level by level)")
    status = 0
    if rep.violations:
        status = 1
        say(f"check: {len(rep.violations)} violation(s) of SPEC §2:")
        for v in rep.violations:
            say(f"  {v}")
    else:
        say(f"check: {len(skus)} sku(s), no level oversold, units sold <= units stocked")

    if not args.no_reconcile:
        clean, code, out, waited = reconcile_until_clean(args.reconcile_timeout)
        if clean:
            say(
                f"check: reconcile exit 0 after {waited:.1f}s: {out.splitlines()[-1] if out else ''}"
            )
        else:
            status = 1
            lines = out.splitlines()
            say(
                f"check: reconcile exit {code} after {waited:.1f}s ({len(lines)} line(s) of output)"
            )
            for line in lines[:40]:
                say(f"  {line}")
    say("check: OK" if status == 0 else "check: FAILED")
    return status


if __name__ == "__main__":
    sys.exit(main())
