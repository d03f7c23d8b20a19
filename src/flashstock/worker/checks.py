"""What the worker does beside persisting: the periodic reconcile, metrics, fault hooks.

* :class:`DriftWatch` compares Redis with the ledger every
  ``reconcile_interval_seconds`` and exports the result as gauges
  (``flashstock_reconcile_differences``, ``flashstock_reconcile_lost_events``) and
  a log line; it repairs nothing (``flashstock reconcile --fix`` does).
* :func:`fault_hooks`: with ``FLASHSTOCK_WORKER_FAULT_DIR`` set, the worker stops
  dead at a point of a batch when a file of that point's name appears there
  (``before_insert``, ``after_commit``), writing ``<point>.reached`` first, so a
  test can ``kill -9`` it exactly there. Never set in production.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import redis
from prometheus_client import Gauge
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from flashstock.settings import Settings

log = logging.getLogger("flashstock.worker")

DIFFERENCES = Gauge(
    "flashstock_reconcile_differences",
    "Level fields on which Redis and the ledger disagreed at the last periodic reconcile",
)
LOST = Gauge(
    "flashstock_reconcile_lost_events",
    "Ledger events missing from Redis at the last periodic reconcile (run reconcile --fix)",
)
LAST_RUN = Gauge(
    "flashstock_reconcile_last_run_timestamp_seconds", "When the periodic reconcile last ran"
)

FAULT_DIR = "FLASHSTOCK_WORKER_FAULT_DIR"


class DriftWatch:
    """Runs reconcile every ``reconcile_interval_seconds`` until stopped."""

    def __init__(self, redis_client: redis.Redis, engine: Engine, settings: Settings) -> None:
        self.redis, self.engine, self.settings = redis_client, engine, settings
        self.runs = 0
        self.last: tuple[int, int] | None = None  # (differences, lost events)

    def check_once(self) -> tuple[int, int]:
        from flashstock.reconcile import ReconcileError, lost_from_redis, reconcile

        try:
            diffs = reconcile(self.redis, self.engine, self.settings)
            lost = lost_from_redis(self.redis, self.engine, self.settings)
        except (ReconcileError, redis.RedisError, SQLAlchemyError) as exc:
            log.warning("periodic reconcile skipped: %s", exc)
            return self.last or (0, 0)
        self.runs += 1
        self.last = (len(diffs), len(lost))
        DIFFERENCES.set(len(diffs))
        LOST.set(len(lost))
        LAST_RUN.set(time.time())
        if diffs or lost:
            log.warning(
                "reconcile: %d difference(s), %d ledger event(s) missing from Redis; first: %s "
                "(`flashstock reconcile --fix` applies the ledger's truth)",
                len(diffs),
                len(lost),
                "; ".join(str(x) for x in [*lost[:3], *diffs[:3]]),
            )
        else:
            log.info("reconcile: Redis and the ledger agree")
        return self.last

    def run(self, stop: threading.Event) -> None:
        interval = self.settings.reconcile_interval_seconds
        while not stop.wait(interval):
            self.check_once()


def start_drift_watch(watch: DriftWatch, stop: threading.Event) -> threading.Thread | None:
    if watch.settings.reconcile_interval_seconds <= 0:
        return None
    t = threading.Thread(target=watch.run, args=(stop,), name="flashstock-reconcile", daemon=True)
    t.start()
    return t


def serve_metrics(settings: Settings) -> None:
    """Expose this process's Prometheus metrics when ``worker_metrics_port`` is set."""
    if settings.worker_metrics_port:
        from prometheus_client import start_http_server

        start_http_server(settings.worker_metrics_port, addr=settings.host)
        log.info("metrics on http://%s:%d/", settings.host, settings.worker_metrics_port)


def _stop_here(directory: Path, point: str) -> Callable[[Sequence[Any]], None]:
    def hook(entries: Sequence[Any]) -> None:
        trigger = directory / point
        if trigger.exists():
            trigger.unlink()
            (directory / f"{point}.reached").write_text(str(len(entries)))
            while True:  # wait here for the kill -9
                time.sleep(60)

    return hook


def fault_hooks() -> dict[str, Callable[[Sequence[Any]], None]]:
    """``before_insert``/``after_commit`` hooks for crash tests; none unless the variable is set."""
    directory = os.environ.get(FAULT_DIR)
    if not directory:
        return {}
    log.warning("fault injection enabled (%s=%s)", FAULT_DIR, directory)
    return {p: _stop_here(Path(directory), p) for p in ("before_insert", "after_commit")}
