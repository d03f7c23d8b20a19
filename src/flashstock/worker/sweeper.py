"""The expiry sweeper: gives back the units of holds whose TTL has passed.

Correctness never depends on it: every script reaps the expired holds of the
levels it reads (SPEC invariant 3). Sweeping keeps ``reserved`` in the level
hashes close to the truth for readers that do not reap, and turns each
expiry into its ``expired`` event soon after it happens, not at the next sale.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import redis
from prometheus_client import Counter

from flashstock.keys import Keys
from flashstock.settings import Settings

log = logging.getLogger("flashstock.sweeper")

EXPIRED = Counter("flashstock_holds_swept", "Reservations expired by the sweeper")
# One tick sweeps a partition at most this many times sweep_batch, then lets others go.
MAX_ROUNDS = 20


class ExpirySweeper:
    """Calls the ``sweep`` script on every partition.

    ``available`` is False when the scripts cannot be loaded (then
    :meth:`sweep_once` does nothing), so the worker runs without it.
    """

    def __init__(
        self, redis_client: redis.Redis, settings: Settings, scripts: Any = None,
        guard: Callable[[], bool] | None = None,
    ) -> None:  # fmt: skip
        self.redis = redis_client
        self.settings = settings
        self.guard = guard  # False: Redis must not be written to now (worker/guard.py)
        self.expired = 0
        self.scripts = scripts
        if scripts is None:
            try:
                from flashstock.scripts import Scripts

                scripts = Scripts()
                scripts["sweep"]
                self.scripts = scripts
            except (ImportError, KeyError, OSError) as exc:
                log.warning("expiry sweeper disabled: no sweep script (%s)", exc)
        self.bases = [Keys(settings.key_prefix, p).base for p in range(settings.partitions)]

    @property
    def available(self) -> bool:
        return self.scripts is not None

    def _call(self, base: str) -> int:
        res = self.scripts.call_sync(
            self.redis,
            "sweep",
            keys=[base],
            args=[self.settings.retention_seconds * 1000, self.settings.sweep_batch],
        )
        if isinstance(res, (list, tuple)):  # {code, count}
            code = int(res[0])
            if code < 0:
                raise RuntimeError(f"sweep refused with code {code}: {res[1:]!r}")
            return int(res[1])
        return int(res)

    def sweep_once(self) -> int:
        """Expire every hold past its TTL (bounded per call); returns how many."""
        if self.scripts is None or (self.guard is not None and not self.guard()):
            return 0
        total = 0
        for base in self.bases:
            for _ in range(MAX_ROUNDS):
                n = self._call(base)
                total += n
                if n < self.settings.sweep_batch:
                    break
        if total:
            self.expired += total
            EXPIRED.inc(total)
            log.debug("expired %d holds", total)
        return total

    def run(self, stop: threading.Event) -> None:
        """Sweep every ``sweep_interval_ms`` until ``stop`` is set; Redis errors are logged."""
        interval = self.settings.sweep_interval_ms / 1000
        while not stop.wait(interval):
            try:
                self.sweep_once()
            except (redis.RedisError, RuntimeError) as exc:
                log.warning("sweep failed (%s); next try in %.1fs", exc, interval)


def start_sweeper(sweeper: ExpirySweeper, stop: threading.Event) -> threading.Thread | None:
    """Run ``sweeper`` in a daemon thread until ``stop``; None when it has no script."""
    if not sweeper.available:
        return None
    t = threading.Thread(target=sweeper.run, args=(stop,), name="flashstock-sweeper", daemon=True)
    t.start()
    return t
