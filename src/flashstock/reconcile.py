"""Redis against the ledger, level by level, exact even while events are being written.

Two checks per level (``sku``, ``location``), each field ``on_hand reserved
committed safety``:

* ``levels``: the ``levels`` table (after-values of the newest persisted event),
  plus the change made by each event that is still only in the stream and is
  newer than that row;
* ``replay``: the sum of every ``ledger_movements`` delta from zero, plus the
  deltas of the events still only in the stream.

Exactness under traffic comes from the order of reads: (1) one database
snapshot T0 (REPEATABLE READ on PostgreSQL, one transaction on SQLite); (2) per
partition, one atomic Redis snapshot T1 > T0 (MULTI) of every level and of the
whole stream; (3) which of those stream entries the T0 snapshot holds. Every
event is then either in the T0 ledger or in the T1 stream, except one that was
persisted, acknowledged and trimmed between T0 and T1; (4) a fresh count after
T1 detects that case and the comparison is simply taken again.

A level on one side only is reported once per field with ``None`` on the
missing side. An expired hold that no script has reaped yet is still in
``reserved`` in Redis; reaping writes its ``expired`` event, so it balances.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import redis
from sqlalchemy import Connection, Engine, and_, func, or_, select

from flashstock.db.models import items, ledger_events, ledger_movements, levels
from flashstock.keys import Keys, partition_of
from flashstock.settings import Settings
from flashstock.worker.consumer import GROUP
from flashstock.worker.persist import Event, parse_entry, parse_id

log = logging.getLogger(__name__)

FIELDS = ("on_hand", "reserved", "committed", "safety")
Level = tuple[str, str]


@dataclass(frozen=True, slots=True)
class Difference:
    """One field of one level that Redis and the ledger disagree on.

    ``redis``/``ledger`` is None when the level is missing on that side;
    ``check`` says which ledger view disagreed: ``levels`` or ``replay``.
    """

    sku: str
    location: str
    field: str
    redis: int | None
    ledger: int | None
    check: str

    def __str__(self) -> str:
        r = "missing" if self.redis is None else self.redis
        led = "missing" if self.ledger is None else self.ledger
        return f"{self.sku} @ {self.location}: {self.field} redis={r} ledger={led} ({self.check})"


class ReconcileError(RuntimeError):
    """The ledger kept changing under every attempt to take a consistent view."""


@dataclass
class _Partition:
    partition: int
    levels: dict[Level, list[int]]
    entries: list[Any]  # the stream, as XRANGE returned it
    bound: tuple[int, int]  # every ledger event below this id must already be in the T0 view
    persisted: set[tuple[int, int]] = field(default_factory=set)
    below: int = 0
    events: list[Event] = field(default_factory=list)


def _s(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _discover(client: redis.Redis, keys: Keys) -> tuple[set[str], dict[str, list[str]]]:
    skus = {_s(s) for s in client.smembers(keys.skus)}
    return skus, {sku: [_s(x) for x in client.zrange(keys.locations(sku), 0, -1)] for sku in skus}


def _redis_partition(
    client: redis.Redis, keys: Keys, partition: int, skus: set[str], locs: dict[str, list[str]]
) -> _Partition:
    """One MULTI: every level of the partition and its whole stream, at one instant.

    ``skus``/``locs`` name the levels to read; they are read again in the same MULTI and
    when they changed meanwhile (a new sku or location) the snapshot is taken again.
    """
    for _ in range(20):
        order = sorted(skus)
        pipe = client.pipeline(transaction=True)
        pipe.smembers(keys.skus)
        for sku in order:
            pipe.zrange(keys.locations(sku), 0, -1)
        pairs = [(sku, loc) for sku in order for loc in locs[sku]]
        for sku, loc in pairs:
            pipe.hmget(keys.level(sku, loc), *FIELDS)
        pipe.xrange(keys.events, "-", "+")
        pipe.xinfo_stream(keys.events)
        res = pipe.execute(raise_on_error=False)
        now_skus = {_s(s) for s in res[0]}
        now_locs = {sku: [_s(x) for x in res[1 + i]] for i, sku in enumerate(order)}
        if now_skus != skus or now_locs != locs:  # a sku or location appeared: look again
            skus = now_skus
            locs = {s: now_locs.get(s) or [] for s in skus}
            for sku in skus - set(now_locs):
                locs[sku] = [_s(x) for x in client.zrange(keys.locations(sku), 0, -1)]
            continue
        values = res[1 + len(order) : 1 + len(order) + len(pairs)]
        lv = {
            pair: [int(x or 0) for x in v]
            for pair, v in zip(pairs, values, strict=True)
            if any(x is not None for x in v)
        }
        entries, info = res[-2], res[-1]
        if entries:
            bound = parse_id(entries[0][0])
        elif isinstance(info, dict):
            ms, seq = parse_id(_s(info["last-generated-id"]))
            bound = (ms, seq + 1)
        else:  # no stream at all: nothing was ever written
            bound = (0, 0)
        return _Partition(partition, lv, entries, bound)
    raise ReconcileError(f"skus of partition {partition} kept changing")


def _below(t: Any, bound: tuple[int, int]) -> Any:
    ms, seq = bound
    return or_(t.c.stream_ms < ms, and_(t.c.stream_ms == ms, t.c.stream_seq < seq))


def _count_below(conn: Connection, p: int, bound: tuple[int, int]) -> int:
    t = ledger_events
    q = select(func.count()).select_from(t).where(t.c.partition == p, _below(t, bound))
    return int(conn.execute(q).scalar_one())


def _persisted(conn: Connection, part: _Partition) -> set[tuple[int, int]]:
    if not part.events:
        return set()
    t = ledger_events
    first = (part.events[0].ms, part.events[0].seq)
    q = select(t.c.stream_ms, t.c.stream_seq).where(
        t.c.partition == part.partition, t.c.stream_ms >= first[0]
    )
    return {(r.stream_ms, r.stream_seq) for r in conn.execute(q)}


def _ledger_views(
    conn: Connection,
) -> tuple[dict[Level, tuple[list[int], tuple[int, int]]], dict[Level, list[int]]]:
    table: dict[Level, tuple[list[int], tuple[int, int]]] = {}
    for r in conn.execute(select(levels)):
        table[(r.sku, r.location)] = (
            [r.on_hand, r.reserved, r.committed, r.safety],
            (r.ver_ms, r.ver_seq),
        )
    m = ledger_movements
    q = select(
        m.c.sku,
        m.c.location,
        func.sum(m.c.d_on_hand),
        func.sum(m.c.d_reserved),
        func.sum(m.c.d_committed),
        func.sum(m.c.d_safety),
    ).group_by(m.c.sku, m.c.location)
    replay: dict[Level, list[int]] = {
        (r[0], r[1]): [int(x) for x in r[2:]] for r in conn.execute(q)
    }
    # Locations a policy event declared exist at zero in Redis without a movement.
    for r in conn.execute(select(items.c.sku, items.c.locations)):
        for loc in r.locations or []:
            replay.setdefault((r.sku, loc), [0, 0, 0, 0])
    return table, replay


def _compare(
    redis_lv: dict[Level, list[int]], ledger_lv: dict[Level, list[int]], check: str
) -> list[Difference]:
    out = []
    for key in sorted(set(redis_lv) | set(ledger_lv)):
        r, led = redis_lv.get(key), ledger_lv.get(key)
        for i, name in enumerate(FIELDS):
            rv = None if r is None else r[i]
            lv = None if led is None else led[i]
            if rv != lv:
                out.append(Difference(key[0], key[1], name, rv, lv, check))
    return out


def _add(target: dict[Level, list[int]], key: Level, d: Iterable[int]) -> None:
    cur = target.setdefault(key, [0, 0, 0, 0])
    for i, x in enumerate(d):
        cur[i] += x


def _attempt(client: redis.Redis, engine: Engine, settings: Settings) -> list[Difference] | None:
    conn = engine.connect()
    if engine.dialect.name == "postgresql":
        conn = conn.execution_options(isolation_level="REPEATABLE READ")
    keys = [Keys(settings.key_prefix, p) for p in range(settings.partitions)]
    found = [_discover(client, k) for k in keys]
    with conn, conn.begin():
        # T0: the first read fixes the snapshot. Keep T0..T1 short: an entry persisted and
        # trimmed in between forces another attempt. The heavy queries come after T1.
        conn.execute(select(ledger_events.c.id).limit(1)).all()
        parts = [_redis_partition(client, k, p, *found[p]) for p, k in enumerate(keys)]
        table, replay = _ledger_views(conn)
        for part in parts:
            part.events = [parse_entry(part.partition, mid, f) for mid, f in part.entries]
            part.persisted = _persisted(conn, part)
            part.below = _count_below(conn, part.partition, part.bound)
    with engine.connect() as fresh:
        for part in parts:
            if _count_below(fresh, part.partition, part.bound) != part.below:
                log.info("partition %d: entries persisted and trimmed meanwhile", part.partition)
                return None

    redis_lv: dict[Level, list[int]] = {}
    by_table = {k: list(v) for k, (v, _) in table.items()}
    for part in parts:
        redis_lv.update(part.levels)
        for e in part.events:
            if (e.ms, e.seq) in part.persisted:
                continue
            for ln in e.lines:
                key = (ln.sku, ln.loc)
                _add(replay, key, ln.d)
                row = table.get(key)
                # The row already holds the effect of every event up to its own position.
                if row is None or (e.ms, e.seq) > row[1]:
                    _add(by_table, key, ln.d)
    return _compare(redis_lv, by_table, "levels") + _compare(redis_lv, replay, "replay")


def reconcile(
    redis_client: redis.Redis, db_engine: Engine, settings: Settings, *, attempts: int = 10
) -> list[Difference]:
    """Compare every level in Redis with the ledger; an empty list means they agree.

    Args:
        redis_client: synchronous redis-py client.
        db_engine: the ledger database.
        settings: key prefix and number of partitions.
        attempts: how many consistent views to try when entries are trimmed meanwhile.

    Returns:
        The differences, sorted by sku, location, check and field.

    Raises:
        ReconcileError: no consistent view in ``attempts`` tries.
    """
    for _ in range(attempts):
        result = _attempt(redis_client, db_engine, settings)
        if result is not None:
            return sorted(result, key=lambda d: (d.sku, d.location, d.check, FIELDS.index(d.field)))
    raise ReconcileError(f"no consistent view of the ledger in {attempts} attempts")


# --- what Redis lost, and putting the ledger's truth back ----------------------------------


@dataclass(frozen=True, slots=True)
class LostEvent:
    """An event the ledger holds that Redis no longer has: its stream id is above the
    stream's last id, so Redis restarted from a state older than the event (a crash with
    AOF ``everysec`` lost its last writes after the worker had persisted them)."""

    partition: int
    stream_id: str
    type: str
    reservation_id: str | None
    order_id: str | None
    ref: str | None
    sku: str | None

    def __str__(self) -> str:
        what = [f"{k} {v}" for k, v in (("reservation", self.reservation_id),
                ("order", self.order_id), ("ref", self.ref), ("sku", self.sku)) if v]  # fmt: skip
        return f"partition {self.partition} {self.stream_id} {self.type}: {', '.join(what)}"


def _stream_last(client: redis.Redis, keys: Keys) -> tuple[int, int]:
    try:
        info = client.xinfo_stream(keys.events)
    except redis.ResponseError:  # no stream: Redis has never written an event
        return (0, 0)
    return parse_id(_s(info["last-generated-id"]))


def not_yet_persisted(client: redis.Redis, settings: Settings) -> int:
    """How many events the streams hold that the worker has not acknowledged yet."""
    n = 0
    for p in range(settings.partitions):
        stream = Keys(settings.key_prefix, p).events
        try:
            groups = client.xinfo_groups(stream)
        except redis.ResponseError:  # no stream: nothing was ever written
            continue
        group = next((g for g in groups if _s(g["name"]) == GROUP), None)
        if group is None or group.get("lag") is None:  # unread, or Redis cannot tell: all
            n += client.xlen(stream)
        else:
            n += int(group["pending"]) + int(group["lag"])
    return n


def lost_from_redis(
    redis_client: redis.Redis, db_engine: Engine, settings: Settings
) -> list[LostEvent]:
    """The ledger's events newer than each partition stream's last id, oldest first.

    Empty in normal operation: Redis writes an event before the worker can persist it.
    """
    out: list[LostEvent] = []
    t = ledger_events
    with db_engine.connect() as conn:
        for p in range(settings.partitions):
            last = _stream_last(redis_client, Keys(settings.key_prefix, p))
            q = (
                select(
                    t.c.stream_ms,
                    t.c.stream_seq,
                    t.c.type,
                    t.c.reservation_id,
                    t.c.order_id,
                    t.c.ref,
                    t.c.payload,
                )  # fmt: skip
                .where(t.c.partition == p, ~_below(t, (last[0], last[1] + 1)))
                .order_by(t.c.stream_ms, t.c.stream_seq)
            )
            for r in conn.execute(q):
                sku = r.payload.get("sku") if isinstance(r.payload, dict) else None
                out.append(
                    LostEvent(
                        p,
                        f"{r.stream_ms}-{r.stream_seq}",
                        r.type,
                        r.reservation_id,
                        r.order_id,
                        r.ref,
                        sku if isinstance(sku, str) else None,
                    )  # fmt: skip
                )
    return out


@dataclass
class FixReport:
    """What ``reconcile --fix`` found and did."""

    lost: list[LostEvent] = field(default_factory=list)
    restored: Any = None  # a flashstock.rebuild.RebuildReport, when entities were restored
    corrected: list[Difference] = field(default_factory=list)
    remaining: list[Difference] = field(default_factory=list)
    skipped: list[Difference] = field(default_factory=list)


def _restore_lost(settings: Settings, db_engine: Engine, lost: list[LostEvent]) -> Any:
    """Write back, from the ledger, every reservation, order, policy and idempotency record
    that a lost event touched (levels are corrected by difference afterwards)."""
    import asyncio

    from flashstock.engine import Engine as StockEngine
    from flashstock.rebuild import RebuildReport, read_ledger, redis_now_ms, write
    from flashstock.redis_client import create_async

    only: dict[str, set[str]] = {
        "skus": set(),
        "orders": set(),
        "reservations": set(),
        "refs": set(),
    }
    for e in lost:
        for kind, v in (("reservations", e.reservation_id), ("orders", e.order_id),
                        ("refs", e.ref)):  # fmt: skip
            if v:
                only[kind].add(v)
        if e.type == "policy" and e.sku:
            only["skus"].add(e.sku)

    async def run() -> Any:
        client = create_async(settings.redis_url or "", "reconcile")
        try:
            engine = StockEngine(client, settings)
            now = await redis_now_ms(client)
            state = await asyncio.to_thread(
                read_ledger, db_engine, now, settings.retention_seconds * 1000,
                settings.partitions, only=only,
            )  # fmt: skip
            report = RebuildReport()
            await write(engine, state, report)
            return report
        finally:
            await client.aclose()

    return asyncio.run(run())


def _correct(
    client: redis.Redis, settings: Settings, diffs: list[Difference]
) -> tuple[list[Difference], list[Difference]]:
    """Move each differing Redis level to the ledger's value by the difference seen in one
    consistent view, so changes made since by scripts (and their events) are kept."""
    by_level: dict[Level, list[Difference]] = {}
    for d in diffs:
        if d.check == "levels":
            by_level.setdefault((d.sku, d.location), []).append(d)
    done, skipped = [], []
    for (sku, loc), ds in sorted(by_level.items()):
        if any(d.ledger is None for d in ds):
            skipped += ds  # only in Redis: the ledger has nothing to put there
            continue
        keys = Keys(settings.key_prefix, partition_of(sku, settings.partitions))
        pipe = client.pipeline(transaction=True)
        if any(d.redis is None for d in ds):  # lost from Redis: put it back whole
            pipe.hset(keys.level(sku, loc), mapping={d.field: d.ledger for d in ds})
            rest = client.hget(keys.item(sku), "prio_rest")
            pipe.zadd(keys.locations(sku), {loc: int(rest or 0)}, nx=True)
            pipe.sadd(keys.skus, sku)
        else:
            for d in ds:
                pipe.hincrby(keys.level(sku, loc), d.field, int(d.ledger) - int(d.redis))  # type: ignore[arg-type]
        pipe.execute()
        done += ds
    return done, skipped


def fix(redis_client: redis.Redis, db_engine: Engine, settings: Settings) -> FixReport:
    """Apply the ledger's truth to Redis: restore what a crash lost, then correct levels.

    Events still only in the streams are never applied twice: the comparison already
    counts them on the ledger's side, and the correction is the difference.
    """
    report = FixReport(lost=lost_from_redis(redis_client, db_engine, settings))
    if report.lost:
        report.restored = _restore_lost(settings, db_engine, report.lost)
        # The lost events' count went with them: the partition's count of events written,
        # which the ledger's row count is checked against, takes them back.
        per_partition = Counter(e.partition for e in report.lost)
        for p, n in per_partition.items():
            redis_client.hincrby(Keys(settings.key_prefix, p).stats, "events", n)
    report.corrected, report.skipped = _correct(
        redis_client, settings, reconcile(redis_client, db_engine, settings)
    )
    report.remaining = reconcile(redis_client, db_engine, settings)
    return report
