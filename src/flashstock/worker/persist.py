"""Stream entries to ledger rows, exactly once, in one transaction per batch.

A batch is a list of ``(partition, stream_id, fields)`` as XREADGROUP /
XAUTOCLAIM return them (bytes or str). :func:`persist_batch` inserts the events
with ``INSERT … ON CONFLICT DO NOTHING`` keyed by ``(partition, stream_ms,
stream_seq)``; only the events that statement inserted (the new ones) get their
movements written and their effects applied to the derived tables, in stream
order. A batch delivered twice (the worker died after COMMIT, before XACK)
therefore changes nothing the second time.

Derived tables merge by stream position, see flashstock/db/models.py: a batch
first folds the new events of one key (level, item, reservation, order) into one
row in Python (:func:`derived`), then upserts that row with a ``WHERE``/``CASE``
on the stored position, so an older event reclaimed late never overwrites a newer one.

Two writers send the same rows under the same ``ON CONFLICT`` rules (built here):
on PostgreSQL :mod:`flashstock.worker.pgcopy` streams them with ``COPY`` into
temporary tables and inserts from there; on SQLite (the embedded ledger)
:func:`write_rows` sends multi-row INSERTs through SQLAlchemy. Rows carry times as
epoch milliseconds (the events' own unit); each writer turns them into timestamps.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import cache
from typing import Any

import orjson
from sqlalchemy import Connection, Engine, Table, and_, case, func, or_
from sqlalchemy.exc import DataError

from flashstock.db.models import (
    UTCDateTime,
    items,
    ledger_events,
    ledger_movements,
    levels,
    ms_to_dt,
    orders,
    reservations,
)

log = logging.getLogger(__name__)

Entry = tuple[int, "str | bytes", Mapping[Any, Any]]

# Reservation status after each event type that changes one (the event's own
# `status` is the order's status on `committed`, so it is not used here).
RESERVATION_STATUS = {
    "reserved": "active",
    "extended": "active",
    "released": "released",
    "expired": "expired",
    "committed": "committed",
}
ORDER_EVENTS = frozenset({"committed", "fulfilled", "cancelled", "returned"})
POLICY_INTS = ("backorder_limit", "ships_in_days", "low_stock_threshold", "per_customer_limit")
LEVEL_FIELDS = ("on_hand", "reserved", "committed", "safety")

# The exactly-once key of ledger_events, and the columns an event fills, in the order of
# Event.values(); a movement's columns besides its event, in the order of movements().
EVENT_KEY = ("partition", "stream_ms", "stream_seq")
EVENT_COLUMNS = (
    *EVENT_KEY,
    *("type", "at", "reservation_id", "order_id", "customer_id", "ref", "reason", "key_id"),
    "payload",
)
MOVEMENT_COLUMNS = (
    *("line_no", "sku", "location", "quantity", "backordered"),
    *("d_on_hand", "d_reserved", "d_committed", "d_safety"),
    *LEVEL_FIELDS,
)


@dataclass(frozen=True, slots=True)
class PersistResult:
    """What one call wrote: ``inserted`` new events, ``duplicates`` already in the ledger."""

    inserted: int
    duplicates: int


# --- parsing ---------------------------------------------------------------------------------
# Every entry of a batch goes through here, so the usual shapes (a str, an int in range)
# are tested first and cheaply; anything else takes the careful path below them.


def parse_id(stream_id: str | bytes) -> tuple[int, int]:
    """``"1733250000123-4"`` → ``(1733250000123, 4)``."""
    if isinstance(stream_id, bytes):
        stream_id = stream_id.decode()
    ms, _, seq = stream_id.partition("-")
    return int(ms), int(seq or 0)


_BIGINT = 2**63


def _int(v: Any) -> int | None:
    """A bigint from JSON, or None: Lua's cjson may print a whole number as ``1e+15``."""
    if type(v) is int:
        return v if -_BIGINT <= v < _BIGINT else None
    if isinstance(v, bool):
        return int(v)
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    elif isinstance(v, str):
        try:
            v = int(v)
        except ValueError:
            return None
    if isinstance(v, int) and -_BIGINT <= v < _BIGINT:
        return v
    return None


def _str(v: Any) -> str | None:
    if type(v) is str:
        return v
    if v is None or isinstance(v, (dict, list)):
        return None
    return v if isinstance(v, str) else str(v)


def _list(v: Any) -> list[Any]:
    # cjson encodes an empty Lua table as {}; treat it as an empty list.
    return v if isinstance(v, list) else []


def _quad(v: Any) -> list[int] | None:
    if not isinstance(v, list) or len(v) != 4:
        return None
    a, b, c, d = v
    if type(a) is type(b) is type(c) is type(d) is int and -_BIGINT <= min(v) <= max(v) < _BIGINT:
        return v  # as the scripts write it: kept, not copied
    out = [_int(x) for x in v]
    return None if None in out else out  # type: ignore[return-value]


@dataclass(slots=True)
class Line:
    sku: str
    loc: str
    qty: int
    bo: int
    d: list[int]
    lv: list[int]


@dataclass(slots=True)
class Event:
    """One parsed stream entry. ``text`` is the entry's JSON verbatim when it parsed as is."""

    partition: int
    ms: int
    seq: int
    type: str
    payload: dict[str, Any]
    at_ms: int | None = None
    rid: str | None = None
    oid: str | None = None
    cust: str | None = None
    ref: str | None = None
    reason: str | None = None
    by: str | None = None  # id of the API key that made an ops change
    lines: list[Line] = field(default_factory=list)
    text: str | None = None

    @property
    def key(self) -> tuple[int, int, int]:
        return (self.partition, self.ms, self.seq)

    @property
    def at(self) -> datetime | None:
        return ms_to_dt(self.at_ms) if self.at_ms is not None else None

    def values(self, payload: Any = None) -> tuple[Any, ...]:
        """The event's ``ledger_events`` values in ``EVENT_COLUMNS`` order (``at`` in ms);
        ``payload`` in place of :attr:`payload` (its JSON text, say) when given."""
        return (
            *(self.partition, self.ms, self.seq, self.type, self.at_ms),
            *(self.rid, self.oid, self.cust, self.ref, self.reason, self.by),
            self.payload if payload is None else payload,
        )

    def row(self) -> dict[str, Any]:
        return dict(zip(EVENT_COLUMNS, self.values(), strict=True))


def movements(e: Event, *before: Any) -> Iterator[tuple[Any, ...]]:
    """The event's ``ledger_movements`` values, one tuple per line, in ``MOVEMENT_COLUMNS``
    order after the values ``before``."""
    for n, ln in enumerate(e.lines):
        yield (*before, n, ln.sku, ln.loc, ln.qty, ln.bo, *ln.d, *ln.lv)


def _field(fields: Mapping[Any, Any], name: str) -> Any:
    v = fields.get(name.encode())  # the worker's client answers bytes
    return fields.get(name) if v is None else v


def _invalid(partition: int, ms: int, seq: int, raw: Any, why: str) -> Event:
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8", "replace")
    elif not isinstance(raw, str):
        raw = repr(raw)
    # PostgreSQL text and jsonb cannot hold NUL.
    raw = raw.replace("\x00", "\ufffd")
    log.error("entry %s-%s of partition %s is not a valid event (%s)", ms, seq, partition, why)
    return Event(partition, ms, seq, "invalid", {"raw": raw, "error": why})


def parse_entry(partition: int, stream_id: str | bytes, fields: Mapping[Any, Any]) -> Event:
    """Turn one stream entry (docs/events.md) into an :class:`Event`; never raises on bad input."""
    ms, seq = parse_id(stream_id)
    raw = _field(fields, "e")
    if raw is None:
        return _invalid(partition, ms, seq, {_s(k): _s(v) for k, v in fields.items()}, "no e field")
    text = None
    try:
        payload = orjson.loads(raw)
        # orjson read it, so it is valid UTF-8 JSON: the ledger can keep it as written.
        text = raw.decode() if isinstance(raw, bytes) else raw
    except orjson.JSONDecodeError:
        try:  # orjson refuses integers beyond 64 bits; the stdlib does not
            payload = json.loads(raw)
        except ValueError as exc:
            return _invalid(partition, ms, seq, raw, f"bad JSON: {exc}")
    if not isinstance(payload, dict) or not isinstance(payload.get("type"), str):
        return _invalid(partition, ms, seq, raw, "not an object with a type")
    g = payload.get
    ev = Event(
        partition,
        ms,
        seq,
        payload["type"][:32],
        payload,
        at_ms=_int(g("at")),
        rid=_str(g("rid")),
        oid=_str(g("oid")),
        cust=_str(g("cust")),
        ref=_str(g("ref")),
        reason=_str(g("reason")),
        by=_str(g("by")),
        text=text,
    )
    for i, raw_line in enumerate(_list(g("lines"))):
        line = _line(raw_line)
        if line is None:
            log.error("event %s-%s of partition %s: line %d is malformed", ms, seq, partition, i)
            continue
        ev.lines.append(line)
    return ev


def _s(v: Any) -> str:
    return v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)


def _line(raw: Any) -> Line | None:
    if not isinstance(raw, dict):
        return None
    sku, loc = _str(raw.get("sku")), _str(raw.get("loc"))
    d, lv = _quad(raw.get("d")), _quad(raw.get("lv"))
    if sku is None or loc is None or d is None or lv is None:
        return None
    return Line(sku, loc, _int(raw.get("qty")) or 0, _int(raw.get("bo")) or 0, d, lv)


def prepare(entries: Iterable[Entry]) -> tuple[list[Event], int]:
    """Parse, drop repeats of one entry within the batch, sort into stream order.

    Returns the events and how many entries had content. An entry deleted from the
    stream while pending comes back without fields (``None`` or ``{}``): it cannot be
    persisted, and is logged instead of being counted.
    """
    seen: dict[tuple[int, int, int], Event] = {}
    total = 0
    for partition, stream_id, fields in entries:
        if not fields:
            log.error(
                "entry %s of partition %s was deleted before it was persisted",
                _s(stream_id),
                partition,
            )
            continue
        total += 1
        e = parse_entry(partition, stream_id, fields)
        seen.setdefault(e.key, e)
    return sorted(seen.values(), key=lambda e: e.key), total


# --- the merge rules: ON CONFLICT clauses both writers use ------------------------------------

Clause = Callable[[Any], Any]
"""Adds ``ON CONFLICT …`` to a PostgreSQL or SQLite ``INSERT`` of the right table."""


def events_clause(stmt: Any) -> Any:
    """An event already in the ledger (a redelivery) is skipped."""
    return stmt.on_conflict_do_nothing(index_elements=list(EVENT_KEY))


def _newer(table: Table, excluded: Any) -> Any:
    """The incoming row's stream position is after the stored one: ``(ms, seq)`` as integers."""
    return or_(
        table.c.ver_ms < excluded.ver_ms,
        and_(table.c.ver_ms == excluded.ver_ms, table.c.ver_seq < excluded.ver_seq),
    )


def _replace_older(table: Table, keys: Sequence[str], cols: Sequence[str]) -> Clause:
    """Insert, or overwrite a stored row whose position is older (``created_at`` kept)."""

    def clause(stmt: Any) -> Any:
        ex = stmt.excluded
        set_ = {c: ex[c] for c in cols if c not in keys and c != "created_at"}
        if "created_at" in cols:
            set_["created_at"] = func.coalesce(table.c.created_at, ex.created_at)
        return stmt.on_conflict_do_update(index_elements=keys, set_=set_, where=_newer(table, ex))

    return clause


def _keep_existing(keys: Sequence[str]) -> Clause:
    return lambda stmt: stmt.on_conflict_do_nothing(index_elements=list(keys))


# Reservation columns that keep a value once known: a newer event's non-null value wins,
# an older event only fills a gap (see Reservation in db/models.py).
_RSV_FILL = ("customer_id", "expires_at", "lines", "order_id", "created_at", "updated_at")


def _merge_reservation(stmt: Any) -> Any:
    t, ex = reservations, stmt.excluded
    newer = _newer(t, ex)
    set_: dict[str, Any] = {
        c: case((newer, ex[c]), else_=t.c[c]) for c in ("status", "partition", "ver_ms", "ver_seq")
    }
    for c in _RSV_FILL:
        set_[c] = case((newer, func.coalesce(ex[c], t.c[c])), else_=func.coalesce(t.c[c], ex[c]))
    return stmt.on_conflict_do_update(index_elements=["id"], set_=set_)


# --- derived rows: the new events folded per key ---------------------------------------------


@dataclass(frozen=True, slots=True)
class Upsert:
    """Rows for one derived table, sorted by ``keys``, and the clause that merges them.

    Every row has the same columns; times are epoch milliseconds. ``name`` tells two
    upserts of one table apart (a writer caches its statement under it).
    """

    name: str
    table: Table
    keys: tuple[str, ...]
    rows: list[dict[str, Any]]
    clause: Clause

    @property
    def columns(self) -> tuple[str, ...]:
        return tuple(self.rows[0])


def _is_newer(row: Mapping[str, Any], old: Mapping[str, Any]) -> bool:
    return (row["ver_ms"], row["ver_seq"]) > (old["ver_ms"], old["ver_seq"])


def _keep_newest(acc: dict[Any, dict[str, Any]], key: Any, row: dict[str, Any]) -> None:
    old = acc.get(key)
    if old is None or _is_newer(row, old):
        acc[key] = row


def _fold_reservation(acc: dict[str, dict[str, Any]], e: Event, status: str) -> None:
    reserved = e.type == "reserved"
    row = {
        "id": e.rid,
        "partition": e.partition,
        "customer_id": e.cust,
        "status": status,
        "expires_at": _int(e.payload.get("exp")),
        "lines": (
            [{"sku": ln.sku, "loc": ln.loc, "qty": ln.qty, "bo": ln.bo} for ln in e.lines]
            if reserved
            else None
        ),
        "order_id": e.oid if e.type == "committed" else None,
        "created_at": e.at_ms if reserved else None,
        "updated_at": e.at_ms,
        "ver_ms": e.ms,
        "ver_seq": e.seq,
    }
    old = acc.get(row["id"])  # type: ignore[arg-type]
    if old is not None:
        new, older = (row, old) if _is_newer(row, old) else (old, row)
        for c in _RSV_FILL:
            if new[c] is None:
                new[c] = older[c]
        row = new
    acc[row["id"]] = row  # type: ignore[index]


def _order_row(e: Event) -> dict[str, Any] | None:
    snap = e.payload.get("order")
    if not isinstance(snap, dict) or e.oid is None:
        return None
    lines = []
    for ln in _list(snap.get("lines")):
        if isinstance(ln, dict):
            lines.append(
                {
                    "sku": _str(ln.get("sku")),
                    "loc": _str(ln.get("loc")),
                    **{
                        k: _int(ln.get(k)) or 0
                        for k in ("qty", "fulfilled", "cancelled", "returned")
                    },
                }
            )
    return {
        "id": e.oid,
        "partition": e.partition,
        "reservation_id": _str(snap.get("rid")) or e.rid,
        "customer_id": _str(snap.get("cust")) or e.cust,
        "status": _str(snap.get("status")) or _str(e.payload.get("status")) or e.type,
        "lines": lines,
        "created_at": e.at_ms if e.type == "committed" else None,
        "updated_at": e.at_ms,
        "ver_ms": e.ms,
        "ver_seq": e.seq,
    }


def _item_row(e: Event) -> dict[str, Any] | None:
    sku, policy = _str(e.payload.get("sku")), e.payload.get("policy")
    if sku is None or not isinstance(policy, dict):
        return None
    locs = [loc for loc in _list(policy.get("locations")) if isinstance(loc, str)]
    return {
        "sku": sku,
        "partition": e.partition,
        "backorder": _str(policy.get("backorder")),
        "restock_date": _str(policy.get("restock_date")),
        **{k: _int(policy.get(k)) for k in POLICY_INTS},
        "locations": locs,
        "policy": policy,
        "ver_ms": e.ms,
        "ver_seq": e.seq,
        "updated_at": e.at_ms,
    }


def _level_row(e: Event, ln: Line) -> dict[str, Any]:
    row = {"sku": ln.sku, "location": ln.loc, "partition": e.partition}
    row.update(zip(LEVEL_FIELDS, ln.lv, strict=True))
    row.update(ver_ms=e.ms, ver_seq=e.seq, updated_at=e.at_ms)
    return row


def derived(events: Sequence[Event]) -> list[Upsert]:
    """Fold new events, in stream order, per key into one row each, for every derived table.

    The upserts come in a fixed table order, each table's rows sorted by key, so two
    workers writing overlapping batches lock rows in the same order and never deadlock.
    Levels come last: every batch of a sale moves the same hot level, so its row lock
    is taken just before COMMIT and held the least time.
    """
    # A level's row is its newest line's after-values; only that line becomes a row (a
    # sale's batch moves one level thousands of times).
    newest: dict[tuple[str, str], tuple[Event, Line]] = {}
    declared: dict[tuple[str, str], dict[str, Any]] = {}
    its: dict[str, dict[str, Any]] = {}
    rsv: dict[str, dict[str, Any]] = {}
    ords: dict[str, dict[str, Any]] = {}

    for e in events:
        for ln in e.lines:
            old = newest.get(key := (ln.sku, ln.loc))
            if old is None or (e.ms, e.seq) > (old[0].ms, old[0].seq):
                newest[key] = (e, ln)
        status = RESERVATION_STATUS.get(e.type)
        if status is not None and e.rid is not None:
            _fold_reservation(rsv, e, status)
        if e.type in ORDER_EVENTS and (orow := _order_row(e)) is not None:
            _keep_newest(ords, orow["id"], orow)
        if e.type == "policy" and (irow := _item_row(e)) is not None:
            _keep_newest(its, irow["sku"], irow)
            # set_item creates listed locations' levels at zero; mirror that for rebuild.
            for loc in irow["locations"]:
                declared[(irow["sku"], loc)] = {
                    "sku": irow["sku"],
                    "location": loc,
                    "partition": e.partition,
                    **dict.fromkeys(LEVEL_FIELDS, 0),
                    "ver_ms": 0,
                    "ver_seq": 0,
                    "updated_at": e.at_ms,
                }

    def replace(name: str, table: Table, keys: tuple[str, ...], acc: dict[Any, Any]) -> Upsert:
        rows = [acc[k] for k in sorted(acc)]
        return Upsert(name, table, keys, rows, _replace_older(table, keys, tuple(rows[0])))

    lv = {k: _level_row(*v) for k, v in newest.items()}
    out = []
    if rsv:
        rows = [rsv[k] for k in sorted(rsv)]
        out.append(Upsert("reservations", reservations, ("id",), rows, _merge_reservation))
    if ords:
        out.append(replace("orders", orders, ("id",), ords))
    if its:
        out.append(replace("items", items, ("sku",), its))
    if lv:
        out.append(replace("levels", levels, ("sku", "location"), lv))
    missing = {k: v for k, v in declared.items() if k not in lv}
    if missing:
        keys = ("sku", "location")
        rows = [missing[k] for k in sorted(missing)]
        out.append(Upsert("declared levels", levels, keys, rows, _keep_existing(keys)))
    return out


# --- the SQLAlchemy writer (SQLite; PostgreSQL when asked) -----------------------------------


def _insert(conn: Connection, table: Table) -> Any:
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert(table)
    if conn.dialect.name == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        return sqlite_insert(table)
    raise RuntimeError(f"unsupported database: {conn.dialect.name}")


@cache
def time_columns(table: Table) -> frozenset[str]:
    """The columns whose rows carry epoch milliseconds (``timestamptz`` in the table)."""
    return frozenset(c.name for c in table.columns if isinstance(c.type, UTCDateTime))


def _with_datetimes(table: Table, row: dict[str, Any]) -> dict[str, Any]:
    times = time_columns(table)
    return {k: ms_to_dt(v) if k in times and v is not None else v for k, v in row.items()}


def write_rows(conn: Connection, events: Sequence[Event]) -> int:
    """Write sorted events with multi-row INSERTs (SQLAlchemy's executemany); returns how
    many were new. The embedded SQLite ledger's writer, and PostgreSQL's reference in tests."""
    t = ledger_events
    stmt = events_clause(_insert(conn, t)).returning(
        t.c.id, t.c.partition, t.c.stream_ms, t.c.stream_seq
    )
    result = conn.execute(stmt, [_with_datetimes(t, e.row()) for e in events])
    ids = {(r.partition, r.stream_ms, r.stream_seq): r.id for r in result}
    new = [e for e in events if e.key in ids]  # events is sorted: stream order per partition
    moves = [
        {"event_id": ids[e.key], **dict(zip(MOVEMENT_COLUMNS, m, strict=True))}
        for e in new
        for m in movements(e)
    ]
    if moves:
        conn.execute(_insert(conn, ledger_movements), moves)
    for up in derived(new):
        rows = [_with_datetimes(up.table, r) for r in up.rows]
        conn.execute(up.clause(_insert(conn, up.table)), rows)
    return len(new)


# --- one batch, one transaction --------------------------------------------------------------

Writer = Callable[[Connection, Sequence[Event]], int]


def _write(engine: Engine, events: Sequence[Event], copy: bool) -> int:
    with engine.connect() as conn:
        write: Writer = write_rows
        if copy and conn.dialect.name == "postgresql":
            from flashstock.worker import pgcopy

            write = pgcopy.write
        with conn.begin():
            return write(conn, events)


def persist_batch(engine: Engine, entries: Iterable[Entry], *, copy: bool = True) -> PersistResult:
    """Write a batch of stream entries to the ledger in one transaction; exactly once.

    Args:
        engine: the ledger database.
        entries: ``(partition, stream_id, fields)`` triples, in any order.
        copy: on PostgreSQL, send the rows by ``COPY`` (:mod:`~flashstock.worker.pgcopy`);
            False takes the SQLAlchemy writer there too (tests compare the two).

    Returns:
        How many events were new and how many were in the ledger already
        (redelivered); entries repeated within ``entries`` count as duplicates.

    Raises:
        sqlalchemy.exc.OperationalError: the database is unreachable; nothing was
            written, retry the same batch later.
    """
    return persist_events(engine, *prepare(entries), copy=copy)


def persist_events(
    engine: Engine, events: Sequence[Event], total: int, *, copy: bool = True
) -> PersistResult:
    """:func:`persist_batch` for entries already parsed by :func:`prepare`: ``events`` in
    stream order, out of ``total`` entries with content."""
    if not events:
        return PersistResult(0, total)
    try:
        inserted = _write(engine, events, copy)
    except DataError:
        # A value the database refuses (an integer beyond bigint, say) would block the
        # stream forever if retried; find the culprits one by one and keep them as invalid.
        inserted = _write_isolating(engine, events, copy)
    return PersistResult(inserted, total - inserted)


def _write_isolating(engine: Engine, events: Sequence[Event], copy: bool) -> int:
    inserted = 0
    for e in events:
        try:
            inserted += _write(engine, [e], copy)
        except DataError as exc:
            bad = _invalid(e.partition, e.ms, e.seq, json.dumps(e.payload), str(exc.orig))
            inserted += _write(engine, [bad], copy)
    return inserted
