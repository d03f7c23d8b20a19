"""Refuse to write to a Redis that came back older than the ledger.

A Redis restarted from an AOF that missed its last writes (a machine crash in
``fast`` mode, a restored backup) no longer holds changes the worker has already
persisted. ``flashstock reconcile`` names those events by their stream ids, which
lie above the stream's last id, and ``reconcile --fix`` restores them. That only
works while nothing has written to the partition since: the first new event gets
a later id and hides the gap, and the sweeper would expire holds that the ledger
knows were released or committed, giving their units back twice.

So the worker checks before it writes anything: at start, and again whenever
Redis's ``run_id`` changes (every restart gives a new one). A partition behind
the ledger stops the worker (exit 2), the sweeper included; it stays stopped, on
every restart, until ``reconcile --fix`` or ``rebuild`` has brought Redis back.
While the ledger cannot be asked (PostgreSQL down) the sweeper waits; reading
and persisting go on as before (they write no event).
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import redis
from sqlalchemy import Engine

from flashstock.settings import Settings

log = logging.getLogger("flashstock.worker")


class RedisBehindLedger(RuntimeError):
    """Redis lost events the ledger holds; nothing may write until they are restored."""

    def __init__(self, lost: list[Any]) -> None:
        first = lost[0]
        super().__init__(
            f"Redis is behind the ledger: {len(lost)} persisted event(s) are missing from it "
            f"(first: {first}). Redis lost acknowledged changes (a crash before its AOF was "
            "on disk, or an old backup). Keep the API stopped, run `flashstock reconcile` to "
            "see them and `flashstock reconcile --fix` to restore them, then start again."
        )
        self.lost = lost


class RedisGuard:
    """``check()`` raises :class:`RedisBehindLedger` when Redis is older than the ledger."""

    def __init__(self, redis_client: redis.Redis, db: Engine, settings: Settings) -> None:
        self.redis = redis_client
        self.db = db
        self.settings = settings
        self._seen: Any = None  # the run_id found consistent
        self._failed: RedisBehindLedger | None = None
        self._lock = threading.Lock()

    def _run_id(self) -> Any:
        try:
            return self.redis.info("server").get("run_id") or "unknown"
        except redis.ResponseError:  # a Redis without INFO (fakeredis): checked once
            return "unknown"

    def check(self) -> bool:
        """True once this Redis (its ``run_id``) has been found not behind the ledger; False
        while the ledger cannot be asked (checked again next time). Cheap once verified: one
        ``INFO``. Raises :class:`RedisBehindLedger` when it is behind."""
        from sqlalchemy.exc import SQLAlchemyError

        from flashstock.reconcile import lost_from_redis

        with self._lock:
            if self._failed is not None:
                raise self._failed
            run_id = self._run_id()
            if run_id == self._seen:
                return True
            try:
                lost = lost_from_redis(self.redis, self.db, self.settings)
            except SQLAlchemyError as exc:
                log.debug("cannot compare Redis with the ledger yet (%s)", exc)
                return False
            if lost:
                self._failed = RedisBehindLedger(lost)
                log.error("%s", self._failed)
                raise self._failed
            if self._seen is not None:
                log.info("Redis restarted (run_id %s): not behind the ledger", run_id)
            self._seen = run_id
            return True

    def ok(self) -> bool:
        """For the sweeper: True only when Redis may be written to now (a Redis error is
        raised, for the sweeper to log as it logs its own)."""
        try:
            return self.check()
        except RedisBehindLedger:
            return False
