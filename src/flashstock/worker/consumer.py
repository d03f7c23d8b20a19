"""The write-behind loop: partition streams → ledger, acknowledged only once committed.

Per cycle a :class:`LedgerWorker` reads a batch with the consumer group
``ledger`` across every partition stream, persists it in one transaction
(:func:`~flashstock.worker.persist.persist_batch`), commits, then XACKs. A
crash anywhere before the XACK leaves the entries pending; whoever reclaims
them (XAUTOCLAIM, after ``worker_claim_idle_ms``) persists them again, which
the ledger's unique stream key turns into duplicates counted, not rows added.

The stream is the buffer: when the database is down the worker keeps its
batch, backs off and retries; mutations go on appending to the streams.
Nothing trims an entry that is undelivered or delivered but unacknowledged.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import redis
from prometheus_client import Counter
from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError, ProgrammingError, SQLAlchemyError

from flashstock.keys import Keys
from flashstock.settings import Settings
from flashstock.worker.guard import RedisGuard
from flashstock.worker.persist import (
    Entry,
    Event,
    PersistResult,
    parse_id,
    persist_events,
    prepare,
)

log = logging.getLogger("flashstock.worker")

GROUP = "ledger"
MAX_BACKOFF_S = 5.0
# A consumer this idle with nothing pending is a dead worker's name. A live one reads every
# few seconds at most; deleting one that reads meanwhile would orphan what it just read.
PRUNE_IDLE_MS = 3_600_000

INSERTED = Counter("flashstock_ledger_events_inserted", "Stream events written to the ledger")
DUPLICATES = Counter(
    "flashstock_ledger_events_duplicate", "Redelivered stream events already in the ledger"
)
BATCHES = Counter("flashstock_ledger_batches", "Batches committed to the ledger")
RECLAIMED = Counter(
    "flashstock_ledger_events_reclaimed", "Pending events taken over from idle consumers"
)
DB_ERRORS = Counter("flashstock_ledger_persist_errors", "Failed attempts to write a batch")
TRIMMED = Counter("flashstock_stream_entries_trimmed", "Persisted entries trimmed from the streams")


def _no_tables(exc: DBAPIError) -> bool:
    """The database answered, but the ledger's tables are not there (never migrated)."""
    return isinstance(exc, ProgrammingError) or "no such table" in str(exc.orig)


class Stopped(Exception):
    """Raised inside the loop when a stop was requested while waiting to retry."""


Prepared = tuple[list[Event], int]
"""A batch parsed by :func:`~flashstock.worker.persist.prepare`: its events and count."""


def consumer_name() -> str:
    """Unique per process: a restarted worker never inherits a dead one's pending entries
    by name, it reclaims them explicitly."""
    return f"{socket.gethostname()}-{os.getpid()}"


def _s(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _next_id(stream_id: str) -> str:
    ms, seq = parse_id(stream_id)
    return f"{ms + 1}-0" if seq >= 2**64 - 1 else f"{ms}-{seq + 1}"


class LedgerWorker:
    """Persists every partition stream of one key prefix to the ledger.

    Counters ``inserted``, ``duplicates``, ``batches``, ``reclaimed``,
    ``trimmed`` and ``errors`` are kept on the instance (and mirrored as
    Prometheus counters).

    Args:
        redis_client: a synchronous redis-py client (bytes or decoded responses).
        engine: the ledger database.
        settings: key prefix, partitions, batch size, block and claim times.
        consumer: consumer name in the group; unique per process by default.
        after_commit: called with each batch after COMMIT and before XACK
            (fault-injection point for crash tests).
        before_insert: called with each batch before it is written (the other one).
        claim_every_s: how often the loop reclaims idle pending entries.
        trim_every_s: how often the loop trims persisted entries from the streams.
    """

    def __init__(
        self,
        redis_client: redis.Redis,
        engine: Engine,
        settings: Settings,
        *,
        consumer: str | None = None,
        after_commit: Callable[[Sequence[Entry]], None] | None = None,
        before_insert: Callable[[Sequence[Entry]], None] | None = None,
        claim_every_s: float | None = None,
        trim_every_s: float = 5.0,
    ) -> None:
        self.redis = redis_client
        self.engine = engine
        self.settings = settings
        self.consumer = consumer or consumer_name()
        self.after_commit = after_commit
        self.before_insert = before_insert
        self.claim_every_s = (
            claim_every_s if claim_every_s is not None else settings.worker_claim_idle_ms / 2000
        )
        self.trim_every_s = trim_every_s
        self.partition_of: dict[str | bytes, int] = {}
        self.streams: list[str] = []
        for p in range(settings.partitions):
            key = Keys(settings.key_prefix, p).events
            self.streams.append(key)
            self.partition_of[key] = p
            self.partition_of[key.encode()] = p
        self.guard = RedisGuard(redis_client, engine, settings)
        self.inserted = 0
        self.duplicates = 0
        self.batches = 0
        self.reclaimed = 0
        self.trimmed = 0
        self.errors = 0
        self._stop = threading.Event()
        self._groups_ready = False
        self._in_flight: Future[PersistResult] | None = None  # the batch run() is writing

    # --- setup ------------------------------------------------------------------------------

    def ensure_groups(self) -> None:
        """Create the ``ledger`` group on every stream (MKSTREAM, from id 0) if missing."""
        for key in self.streams:
            try:
                self.redis.xgroup_create(key, GROUP, id="0", mkstream=True)
            except redis.ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise
        self._groups_ready = True

    # --- one cycle --------------------------------------------------------------------------

    def _entries(self, resp: Any) -> list[Entry]:
        out: list[Entry] = []
        if isinstance(resp, dict):  # RESP3
            resp = [(k, v[0] if v and isinstance(v[0], list) else v) for k, v in resp.items()]
        for stream, messages in resp or []:
            p = self.partition_of[stream]
            out.extend((p, mid, fields) for mid, fields in messages)
        return out

    def read(self, block_ms: int | None = None, *, pending: bool = False) -> list[Entry]:
        """Up to ``worker_batch`` entries per stream: new ones, or with ``pending`` this
        consumer's own delivered-but-unacknowledged ones."""
        if not self._groups_ready:
            self.ensure_groups()
        start = "0" if pending else ">"
        streams: dict[Any, Any] = dict.fromkeys(self.streams, start)
        try:
            resp = self.redis.xreadgroup(
                GROUP, self.consumer, streams, count=self.settings.worker_batch, block=block_ms
            )
        except redis.ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            # A stream was deleted (and its group with it): recreate and read again.
            self.ensure_groups()
            resp = self.redis.xreadgroup(
                GROUP, self.consumer, streams, count=self.settings.worker_batch, block=block_ms
            )
        return self._entries(resp)

    def persist(self, entries: Sequence[Entry], prepared: Prepared | None = None) -> PersistResult:
        """Write a batch, retrying with back-off while the database is unreachable.

        Raises:
            Stopped: a stop was requested while waiting; the batch stays pending.
        """
        events, total = prepared if prepared is not None else prepare(entries)
        delay = 0.1
        while True:
            try:
                return persist_events(self.engine, events, total)
            except DBAPIError as exc:
                reason = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
                if _no_tables(exc):
                    # A reachable database without the ledger's tables: waiting will not help.
                    log.error(
                        "the ledger database has no flashstock tables (%s): run `flashstock db "
                        "upgrade`; this batch of %d events and every later one wait in the stream",
                        reason,
                        len(entries),
                    )
                else:
                    log.warning(
                        "ledger database down (%s); this batch of %d events and every later one "
                        "wait in the stream, retry in %.1fs",
                        reason,
                        len(entries),
                        delay,
                    )
            except SQLAlchemyError:
                log.exception("writing %d events failed; retry in %.1fs", len(entries), delay)
            self.errors += 1
            DB_ERRORS.inc()
            if self._stop.wait(delay):
                log.warning("stopping with %d events unwritten; they stay pending", len(entries))
                raise Stopped
            delay = min(delay * 2, MAX_BACKOFF_S)

    def ack(self, entries: Sequence[Entry]) -> None:
        by_stream: dict[str, list[Any]] = defaultdict(list)
        for p, mid, _ in entries:
            by_stream[self.streams[p]].append(mid)
        pipe = self.redis.pipeline(transaction=False)
        for key, ids in by_stream.items():
            pipe.xack(key, GROUP, *ids)
        pipe.execute()

    def process(self, entries: Sequence[Entry], prepared: Prepared | None = None) -> PersistResult:
        """Persist, commit, then XACK one batch (``prepared``: already parsed); counts it."""
        if self.before_insert is not None:
            self.before_insert(entries)
        result = self.persist(entries, prepared)
        self.inserted += result.inserted
        self.duplicates += result.duplicates
        self.batches += 1
        INSERTED.inc(result.inserted)
        DUPLICATES.inc(result.duplicates)
        BATCHES.inc()
        if self.after_commit is not None:
            self.after_commit(entries)
        self.ack(entries)
        if result.duplicates:
            log.debug("batch: %d inserted, %d duplicates", result.inserted, result.duplicates)
        return result

    def run_once(self, block_ms: int | None = None) -> int:
        """Read one batch of new entries (waiting up to ``block_ms``) and persist it.

        Returns:
            The number of entries handled; 0 when the streams had nothing new.
        """
        entries = self.read(block_ms)
        if entries:
            self.process(entries)
        return len(entries)

    def process_own_pending(self) -> int:
        """Persist what this consumer name was delivered and never acknowledged."""
        n = 0
        while entries := self.read(pending=True):
            self.process(entries)
            n += len(entries)
        return n

    def reclaim(self, min_idle_ms: int | None = None) -> int:
        """Take over and persist entries left pending longer than ``min_idle_ms`` by any
        consumer (by default ``worker_claim_idle_ms``): those of a crashed worker."""
        if not self._groups_ready:
            self.ensure_groups()
        idle = self.settings.worker_claim_idle_ms if min_idle_ms is None else min_idle_ms
        total = 0
        for p, key in enumerate(self.streams):
            start: Any = "0-0"
            while True:
                resp = self.redis.xautoclaim(
                    key, GROUP, self.consumer, idle, start, count=self.settings.worker_batch
                )
                start, messages = resp[0], resp[1]
                deleted = resp[2] if len(resp) > 2 else []
                if deleted:
                    log.error(
                        "%d pending entries of %s were deleted before being persisted",
                        len(deleted),
                        key,
                    )
                entries = [(p, mid, f) for mid, f in messages if f is not None]
                if entries:
                    log.info("reclaimed %d idle pending entries of %s", len(entries), key)
                    self.process(entries)
                    total += len(entries)
                    self.reclaimed += len(entries)
                    RECLAIMED.inc(len(entries))
                if _s(start) == "0-0":
                    break
        self.prune_consumers(max(PRUNE_IDLE_MS, 10 * idle))
        return total

    def prune_consumers(self, min_idle_ms: int) -> int:
        """Forget consumers with nothing pending, idle longer than ``min_idle_ms``: each
        restarted worker joins under a new name, and the group would keep every old one."""
        removed = 0
        for key in self.streams:
            try:
                consumers = self.redis.xinfo_consumers(key, GROUP)
            except redis.ResponseError:
                continue
            for c in consumers:
                name = _s(c["name"])
                if name != self.consumer and not c["pending"] and c["idle"] > min_idle_ms:
                    removed += int(self.redis.xgroup_delconsumer(key, GROUP, name) == 0)
        return removed

    def leave(self) -> None:
        """Take this consumer's name out of the group where it holds nothing pending, so a
        cleanly stopped worker leaves no name behind; one that holds entries keeps it."""
        for key in self.streams:
            try:
                consumers = self.redis.xinfo_consumers(key, GROUP)
                mine = next((c for c in consumers if _s(c["name"]) == self.consumer), None)
                if mine is not None and not mine["pending"]:
                    self.redis.xgroup_delconsumer(key, GROUP, self.consumer)
            except redis.RedisError as exc:
                log.debug("could not leave the group of %s: %s", key, exc)

    def drain(self) -> int:
        """Persist until the streams have nothing new for this group; returns entries handled.

        Also takes this consumer's own pending entries and idle ones of others
        (older than ``worker_claim_idle_ms``).
        """
        n = self.process_own_pending() + self.reclaim()
        while m := self.run_once():
            n += m
        return n

    # --- trimming ---------------------------------------------------------------------------

    def trim_bound(self, key: str) -> str | None:
        """The lowest id that must stay in ``key``: the oldest pending entry, or just after
        the group's last-delivered id when nothing is pending; None when nothing may go."""
        pipe = self.redis.pipeline(transaction=True)
        # Read together: last-delivered first, then the pending summary. Entries delivered
        # afterwards are newer than this last-delivered id, so they stay above the bound.
        pipe.xinfo_groups(key)
        pipe.xpending(key, GROUP)
        try:
            groups, pending = pipe.execute()
        except redis.ResponseError:  # no stream or no group yet
            return None
        group = next((g for g in groups if _s(g["name"]) == GROUP), None)
        if group is None:
            return None
        if pending["pending"]:
            return _s(pending["min"])
        last = _s(group["last-delivered-id"])
        return None if last == "0-0" else _next_id(last)

    def trim(self) -> int:
        """Remove from each stream the entries persisted and acknowledged (XTRIM MINID)."""
        removed = 0
        for key in self.streams:
            bound = self.trim_bound(key)
            if bound is not None:
                removed += int(self.redis.xtrim(key, minid=bound, approximate=False))
        self.trimmed += removed
        TRIMMED.inc(removed)
        return removed

    # --- the loop ---------------------------------------------------------------------------

    def stop(self) -> None:
        """Ask :meth:`run` to finish the batch in flight and return."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def _backoff(self, what: str, exc: Exception, delay: float) -> float:
        log.warning("%s failed (%s); retry in %.1fs", what, exc, delay)
        self._stop.wait(delay)
        return min(delay * 2, MAX_BACKOFF_S)

    def run(self, stop_event: threading.Event | None = None) -> None:
        """Persist until stopped (SIGTERM/SIGINT in the main thread, ``stop_event``, or
        :meth:`stop`); the batch in flight is always finished first."""
        if stop_event is not None:
            self._stop = stop_event
        log.info(
            "ledger worker %s: %d partition streams of prefix %r",
            self.consumer,
            len(self.streams),
            self.settings.key_prefix,
        )
        delay = 0.1
        while not self._stop.is_set():  # start-up: groups, then whatever was left pending
            try:
                self.guard.check()
                self.ensure_groups()
                self.process_own_pending()
                self.reclaim()
                break
            except Stopped:
                return
            except redis.RedisError as exc:
                delay = self._backoff("start-up", exc, delay)
        with ThreadPoolExecutor(1, thread_name_prefix="ledger-writer") as writer:
            self._loop(writer)
        self.leave()
        log.info(
            "ledger worker %s stopped: %d inserted, %d duplicates, %d batches",
            self.consumer,
            self.inserted,
            self.duplicates,
            self.batches,
        )

    def _loop(self, writer: ThreadPoolExecutor) -> None:
        """Read and parse the next batch while ``writer`` writes the one before.

        One batch is written at a time, in the order read, and acknowledged once
        committed, as :meth:`run_once` does; the next one waits, read and parsed but
        not acknowledged, so it is pending like any batch in flight. The worker's own
        Python (stream replies, JSON) then runs while PostgreSQL works on the last batch.
        """
        now = time.monotonic()
        next_claim, next_trim = now + self.claim_every_s, now + self.trim_every_s
        held: tuple[list[Entry], Prepared] | None = None  # read, not yet handed to the writer
        delay = 0.1
        while not self._stop.is_set():
            try:
                self.guard.check()  # one INFO; the ledger is asked only after a Redis restart
                now = time.monotonic()
                if now >= next_claim or now >= next_trim:
                    self._settle()  # one writer at a time, reclaim included
                if now >= next_claim:
                    self.reclaim()
                    next_claim = now + self.claim_every_s
                if now >= next_trim:
                    self.trim()
                    next_trim = now + self.trim_every_s
                if held is None:
                    # While a batch is being written, take only what is there already.
                    block = None if self._in_flight else self.settings.worker_block_ms
                    if entries := self.read(block):
                        held = (entries, prepare(entries))
                self._settle()
                if held is not None:
                    self._in_flight = writer.submit(self.process, *held)
                    held = None
                delay = 0.1
            except Stopped:
                return  # the database is down: what was read stays pending
            except redis.RedisError as exc:
                delay = self._backoff("reading the streams", exc, delay)
        try:  # stopping: the batch in flight and the one read after it are finished first
            self._settle()
            if held is not None:
                self.process(*held)
        except Stopped:
            pass
        except redis.RedisError as exc:
            log.warning("acknowledging the last batch failed (%s); it stays pending", exc)

    def _settle(self) -> None:
        """Wait for the batch in flight; its error, if any, is raised here, once."""
        in_flight, self._in_flight = self._in_flight, None
        if in_flight is not None:
            in_flight.result()


@contextmanager
def stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """SIGTERM/SIGINT set ``stop`` (a second one exits at once); no-op off the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, _frame: Any) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        log.info("signal %d: finishing the batch in flight, then stopping", signum)
        stop.set()

    old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)
