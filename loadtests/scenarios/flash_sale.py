"""Flash sale: many buyers race for a few hot skus.

Each simulated buyer (one ``customer_id``) browses the hot skus and adds
carts of 1–2 lines with a short hold; a share of carts check out, some are
emptied, the rest are abandoned and come back when their hold expires. A few
buyers check out only after their hold expired (the commit re-reserves).

Request groups (the ``Name`` column of locust's stats):

- ``GET /v1/stock/[sku]``: browse; also checks the levels live (an oversold
  level fails the request).
- ``POST /v1/reservations``: add to cart (201).
- ``POST /v1/reservations/[id]/commit``: check out (200).
- ``DELETE /v1/reservations/[id]``: empty the cart (200).

A refusal the sale is designed to give (``409 insufficient_stock`` once sold
out, ``409 limit_exceeded`` over a per-customer limit) is the system working:
it is reported as a success under its own name, e.g.
``POST /v1/reservations [refused: insufficient_stock]``. Anything else
(5xx, an unexpected 4xx, a connection error) is a failure.

Options: see ``config.py`` (hot skus, shares of commits, releases and late
check-outs, TTL, think time).
"""

from __future__ import annotations

import csv
import json
import logging
import os
import random
import time
import uuid
from collections import Counter
from typing import Any

from locust import FastHttpUser, events, task
from locust.runners import WorkerRunner

from .config import SaleOptions
from .invariants import level_violations

log = logging.getLogger("flashstock.loadtests")

STOCK = "GET /v1/stock/[sku]"
RESERVE = "POST /v1/reservations"
COMMIT = "POST /v1/reservations/[id]/commit"
RELEASE = "DELETE /v1/reservations/[id]"

# 409 codes that mean "sold out" or "over your limit": expected while the sale runs.
EXPECTED_REFUSALS = frozenset({"insufficient_stock", "limit_exceeded"})


class Tally:
    """What this locust process saw, written at the end for ``loadtests.check``."""

    def __init__(self) -> None:
        self.committed_units: Counter[str] = Counter()
        self.carts: Counter[str] = Counter()

    def as_dict(self) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "committed_units": dict(self.committed_units),
            "carts": dict(self.carts),
        }


TALLY = Tally()


def _quote(part: str) -> str:
    from urllib.parse import quote

    return quote(part, safe="")


def _error_code(resp: Any) -> tuple[str, str]:
    try:
        body = json.loads(resp.text or "")
        return str(body.get("error", "")), str(body.get("message", ""))
    except (ValueError, AttributeError):
        return "", (resp.text or "")[:200]


def settle(resp: Any, ok: int) -> str | None:
    """Judge a response opened with ``catch_response=True``.

    Returns "ok", the refusal code of an expected 409, or None for a failure.
    """
    if resp.status_code == ok:
        resp.success()
        return "ok"
    code, message = _error_code(resp)
    if resp.status_code == 409 and code in EXPECTED_REFUSALS:
        resp.request_meta["name"] = f"{resp.request_meta['name']} [refused: {code}]"
        resp.success()
        return code
    if resp.status_code == 0:
        resp.failure(f"no response: {resp.error!r}")
    else:
        resp.failure(f"{resp.status_code} {code or 'no error code'}: {message}")
    return None


class FlashSaleUser(FastHttpUser):
    """One buyer during a flash sale."""

    options: SaleOptions | None = None

    def on_start(self) -> None:
        if FlashSaleUser.options is None:
            FlashSaleUser.options = SaleOptions.from_env()
        self.opts = FlashSaleUser.options
        self.customer_id = f"buyer-{uuid.uuid4().hex[:16]}"

    def wait_time(self) -> float:
        return random.uniform(*self.opts.wait)

    @task(3)
    def browse(self) -> None:
        sku = random.choice(self.opts.skus)
        with self.client.get(f"/v1/stock/{_quote(sku)}", name=STOCK, catch_response=True) as r:
            if settle(r, 200) != "ok":
                return
            try:
                problems = level_violations(r.json())
            except ValueError as exc:
                r.failure(f"unreadable stock body: {exc}")
                return
            if problems:
                r.failure("; ".join(problems))

    @task(2)
    def buy(self) -> None:
        o = self.opts
        skus = random.sample(o.skus, k=min(len(o.skus), random.randint(1, o.max_lines)))
        items = [{"sku": s, "quantity": random.randint(1, o.max_quantity)} for s in skus]
        rid = uuid.uuid4().hex
        body = {
            "reservation_id": rid,
            "customer_id": self.customer_id,
            "ttl_seconds": o.ttl_seconds,
            "items": items,
        }
        with self.client.post(
            "/v1/reservations", json=body, name=RESERVE, catch_response=True
        ) as r:
            outcome = settle(r, 201)
        TALLY.carts[f"reserve {outcome or 'failed'}"] += 1
        if outcome != "ok":
            return

        roll = random.random()
        if roll < o.commit_share and random.random() < o.late_share:
            # A slow buyer: the hold has expired by now, so the commit re-reserves the
            # units if any are left and is refused with insufficient_stock if not.
            time.sleep(o.ttl_seconds + random.uniform(1.0, 4.0))
        else:
            # Filling in the checkout form, well within the hold.
            time.sleep(random.uniform(0.3, 2.5))
        if roll < o.commit_share:
            self._commit(rid)
        elif roll < o.commit_share + o.release_share:
            with self.client.delete(
                f"/v1/reservations/{rid}", name=RELEASE, catch_response=True
            ) as r:
                TALLY.carts[f"release {settle(r, 200) or 'failed'}"] += 1
        else:
            TALLY.carts["abandoned"] += 1

    def _commit(self, rid: str) -> None:
        with self.client.post(
            f"/v1/reservations/{rid}/commit", json={"order_id": f"order-{rid}"},
            name=COMMIT, catch_response=True,
        ) as r:  # fmt: skip
            outcome = settle(r, 200)
            if outcome == "ok":
                try:
                    for line in r.json()["items"]:
                        TALLY.committed_units[line["sku"]] += int(line["quantity"])
                except (ValueError, KeyError, TypeError) as exc:
                    r.failure(f"unreadable order body: {exc}")
                    outcome = None
        TALLY.carts[f"commit {outcome or 'failed'}"] += 1


@events.test_stop.add_listener
def _write_tally(environment: Any, **_kwargs: Any) -> None:
    opts = FlashSaleUser.options
    path = opts.tally_path if opts is not None else os.environ.get("FLASHSTOCK_LOAD_TALLY")
    if not path:
        return
    if isinstance(environment.runner, WorkerRunner):
        path = f"{path}.{os.getpid()}"  # one file per locust worker process; check reads them all
    with open(path, "w", encoding="utf-8") as f:
        json.dump(TALLY.as_dict(), f, indent=2, sort_keys=True)
    log.info("tally written to %s: %s", path, dict(TALLY.carts))


@events.quitting.add_listener
def _write_final_csv(environment: Any, **_kwargs: Any) -> None:
    """``--csv`` files are a snapshot taken every second, so they miss the last moments of
    the run; write the final figures beside them (``<prefix>_final_stats.csv``)."""
    prefix = getattr(environment.parsed_options, "csv_prefix", None)
    if not prefix or isinstance(environment.runner, WorkerRunner):
        return
    from locust.stats import PERCENTILES_TO_REPORT, StatsCSV

    writer = StatsCSV(environment, PERCENTILES_TO_REPORT)
    for kind, write in (("stats", writer.requests_csv), ("failures", writer.failures_csv)):
        with open(f"{prefix}_final_{kind}.csv", "w", newline="", encoding="utf-8") as f:
            write(csv.writer(f))
