"""Stream entries to ledger rows, exactly once, in one transaction per batch.

A batch is a list of ``(partition, stream_id, fields)`` as XREADGROUP /
XAUTOCLAIM return them (bytes or str). :func:`persist_batch` inserts the events
with one multi-row ``INSERT … ON CONFLICT DO NOTHING RETURNING`` keyed by
``(partition, stream_ms, stream_seq)``; only the events that statement returns
(the new ones) get their movements written and their effects applied to the
derived tables, in stream order. A batch delivered twice (the worker died
after COMMIT, before XACK) therefore changes nothing the second time.

Derived tables merge by stream position, see flashstock/db/models.py: a batch
first folds the events of one key (level, item, reservation, order) into one
row in Python, then upserts that row with a ``WHERE``/``CASE`` on the stored
position, so an older event reclaimed late never overwrites a newer one.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import (
    JSON,
    Connection,
    Engine,
    Table,
    Text,
    and_,
    bindparam,
    case,
    cast,
    func,
    or_,
    select,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.exc import DataError

from flashstock.db.models import (
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


@dataclass(frozen=True, slots=True)
class PersistResult:
    """What one call wrote: ``inserted`` new events, ``duplicates`` already in the ledger."""

    inserted: int
    duplicates: int


def parse_id(stream_id: str | bytes) -> tuple[int, int]:
    """``"1733250000123-4"`` → ``(1733250000123, 4)``."""
    if isinstance(stream_id, bytes):
        stream_id = stream_id.decode()
    ms, _, seq = stream_id.partition("-")
    return int(ms), int(seq or 0)


_BIGINT = 2**63


def _int(v: Any) -> int | None:
    """A bigint from JSON, or None: Lua's cjson may print a whole number as ``1e+15``."""
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
    if v is None or isinstance(v, (dict, list)):
        return None
    return v if isinstance(v, str) else str(v)


def _list(v: Any) -> list[Any]:
    # cjson encodes an empty Lua table as {}; treat it as an empty list.
    return v if isinstance(v, list) else []


def _quad(v: Any) -> list[int] | None:
    if not isinstance(v, list) or len(v) != 4:
        return None
    out = [_int(x) for x in v]
    return None if any(x is None for x in out) else out  # type: ignore[return-value]


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
    """One parsed stream entry."""

    partition: int
    ms: int
    seq: int
    type: str
    payload: dict[str, Any]
    at: datetime | None = None
    rid: str | None = None
    oid: str | None = None
    cust: str | None = None
    ref: str | None = None
    reason: str | None = None
    by: str | None = None  # id of the API key that made an ops change
    lines: list[Line] = field(default_factory=list)

    @property
    def key(self) -> tuple[int, int, int]:
        return (self.partition, self.ms, self.seq)

    def row(self) -> dict[str, Any]:
        return {
            "partition": self.partition,
            "stream_ms": self.ms,
            "stream_seq": self.seq,
            "type": self.type,
            "at": self.at,
            "reservation_id": self.rid,
            "order_id": self.oid,
            "customer_id": self.cust,
            "ref": self.ref,
            "reason": self.reason,
            "key_id": self.by,
            "payload": self.payload,
        }


def _field(fields: Mapping[Any, Any], name: str) -> Any:
    v = fields.get(name)
    return fields.get(name.encode()) if v is None else v


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
    try:
        payload = orjson.loads(raw)
    except orjson.JSONDecodeError:
        try:  # orjson refuses integers beyond 64 bits; the stdlib does not
            payload = json.loads(raw)
        except ValueError as exc:
            return _invalid(partition, ms, seq, raw, f"bad JSON: {exc}")
    if not isinstance(payload, dict) or not isinstance(payload.get("type"), str):
        return _invalid(partition, ms, seq, raw, "not an object with a type")
    at = _int(payload.get("at"))
    ev = Event(
        partition,
        ms,
        seq,
        payload["type"][:32],
        payload,
        at=ms_to_dt(at) if at is not None else None,
        rid=_str(payload.get("rid")),
        oid=_str(payload.get("oid")),
        cust=_str(payload.get("cust")),
        ref=_str(payload.get("ref")),
        reason=_str(payload.get("reason")),
        by=_str(payload.get("by")),
    )
    for i, raw_line in enumerate(_list(payload.get("lines"))):
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


# --- writing ---------------------------------------------------------------------------------


def _insert(conn: Connection, table: Table) -> Any:
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert(table)
    if conn.dialect.name == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        return sqlite_insert(table)
    raise RuntimeError(f"unsupported database: {conn.dialect.name}")


def _dumps(v: Any) -> str:
    try:
        return orjson.dumps(v).decode()
    except TypeError:  # an integer beyond 64 bits, kept verbatim in an invalid event
        return json.dumps(v)


Finish = Callable[[Any], Any]
_PG_SQL: dict[tuple[str, tuple[str, ...], str], str] = {}
_PLACEHOLDER = re.compile(r"%\((p_\w+)\)s")


def _bulk_insert(
    conn: Connection, table: Table, rows: list[dict[str, Any]], tag: str, finish: Finish
) -> Any:
    """INSERT many rows in one statement; ``finish`` adds ``ON CONFLICT``/``RETURNING``.

    On PostgreSQL the statement is ``INSERT … SELECT … FROM unnest(:col1, :col2, …)``: one
    array parameter per column, sent in binary. Its text is the same for every batch, so it
    is compiled once (cached here under ``tag``), and parsed and planned once by the server,
    instead of one placeholder per value. SQLite gets an executemany of the same INSERT,
    which SQLAlchemy renders as multi-row ``VALUES`` pages ("insertmanyvalues").
    """
    if conn.dialect.name != "postgresql":
        return conn.execute(finish(_insert(conn, table)), rows)
    cols = tuple(rows[0])
    key = (table.name, cols, tag)
    sql = _PG_SQL.get(key)
    if sql is None:
        sql = _PG_SQL[key] = _compile_unnest(conn, table, cols, finish)
    params = {}
    for c in cols:
        values = [r[c] for r in rows]
        if isinstance(table.c[c].type, JSON):
            values = [None if v is None else _dumps(v) for v in values]
        params[f"p_{c}"] = values
    return conn.exec_driver_sql(sql, params)


def _compile_unnest(conn: Connection, table: Table, cols: tuple[str, ...], finish: Finish) -> str:
    args, json_cols = [], set()
    for c in cols:
        typ = table.c[c].type
        if isinstance(typ, JSON):  # sent as text, turned into jsonb by the server
            json_cols.add(c)
            typ = Text()
        args.append(cast(bindparam(f"p_{c}", type_=ARRAY(typ)), ARRAY(typ)))
    u = func.unnest(*args).table_valued(*cols).render_derived(name="u")
    sel = select(*(cast(u.c[c], JSONB) if c in json_cols else u.c[c] for c in cols))
    stmt = finish(_insert(conn, table).from_select(list(cols), sel))
    sql = str(stmt.compile(dialect=conn.dialect))
    # psycopg's %(name)b sends the arrays in binary: no per-element quoting in Python.
    return _PLACEHOLDER.sub(r"%(\1)b", sql)


def _newer(table: Table, excluded: Any) -> Any:
    """The incoming row's stream position is after the stored one: ``(ms, seq)`` as integers."""
    return or_(
        table.c.ver_ms < excluded.ver_ms,
        and_(table.c.ver_ms == excluded.ver_ms, table.c.ver_seq < excluded.ver_seq),
    )


def _is_newer(row: Mapping[str, Any], old: Mapping[str, Any]) -> bool:
    return (row["ver_ms"], row["ver_seq"]) > (old["ver_ms"], old["ver_seq"])


def _insert_events(conn: Connection, events: Sequence[Event]) -> dict[tuple[int, int, int], int]:
    """Insert events, skipping those already there; returns the new ones' key → id."""
    t = ledger_events

    def finish(stmt: Any) -> Any:
        return stmt.on_conflict_do_nothing(
            index_elements=["partition", "stream_ms", "stream_seq"]
        ).returning(t.c.id, t.c.partition, t.c.stream_ms, t.c.stream_seq)

    result = _bulk_insert(conn, t, [e.row() for e in events], "events", finish)
    return {(r.partition, r.stream_ms, r.stream_seq): r.id for r in result}


def _movements(
    events: Iterable[Event], ids: Mapping[tuple[int, int, int], int]
) -> list[dict[str, Any]]:
    rows = []
    for e in events:
        for n, ln in enumerate(e.lines):
            rows.append(
                {
                    "event_id": ids[e.key],
                    "line_no": n,
                    "sku": ln.sku,
                    "location": ln.loc,
                    "quantity": ln.qty,
                    "backordered": ln.bo,
                    "d_on_hand": ln.d[0],
                    "d_reserved": ln.d[1],
                    "d_committed": ln.d[2],
                    "d_safety": ln.d[3],
                    "on_hand": ln.lv[0],
                    "reserved": ln.lv[1],
                    "committed": ln.lv[2],
                    "safety": ln.lv[3],
                }
            )
    return rows


def _upsert_replace(
    conn: Connection, table: Table, keys: list[str], rows: list[dict[str, Any]]
) -> None:
    """Insert, or overwrite a stored row whose position is older (``created_at`` kept)."""
    if not rows:
        return
    cols = list(rows[0])

    def finish(stmt: Any) -> Any:
        ex = stmt.excluded
        set_ = {c: ex[c] for c in cols if c not in keys and c != "created_at"}
        if "created_at" in cols:
            set_["created_at"] = func.coalesce(table.c.created_at, ex.created_at)
        return stmt.on_conflict_do_update(index_elements=keys, set_=set_, where=_newer(table, ex))

    _bulk_insert(conn, table, rows, "replace", finish)


# Reservation columns that keep a value once known: a newer event's non-null value wins,
# an older event only fills a gap (see Reservation in db/models.py).
_RSV_FILL = ("customer_id", "expires_at", "lines", "order_id", "created_at", "updated_at")


def _upsert_reservations(conn: Connection, rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
    t = reservations

    def finish(stmt: Any) -> Any:
        ex = stmt.excluded
        newer = _newer(t, ex)
        set_: dict[str, Any] = {
            c: case((newer, ex[c]), else_=t.c[c])
            for c in ("status", "partition", "ver_ms", "ver_seq")
        }
        for c in _RSV_FILL:
            set_[c] = case(
                (newer, func.coalesce(ex[c], t.c[c])), else_=func.coalesce(t.c[c], ex[c])
            )
        return stmt.on_conflict_do_update(index_elements=["id"], set_=set_)

    _bulk_insert(conn, t, rows, "merge", finish)


def _fold_reservation(acc: dict[str, dict[str, Any]], e: Event, status: str) -> None:
    exp = _int(e.payload.get("exp"))
    row = {
        "id": e.rid,
        "partition": e.partition,
        "customer_id": e.cust,
        "status": status,
        "expires_at": ms_to_dt(exp) if exp is not None else None,
        "lines": (
            [{"sku": ln.sku, "loc": ln.loc, "qty": ln.qty, "bo": ln.bo} for ln in e.lines]
            if e.type == "reserved"
            else None
        ),
        "order_id": e.oid if e.type == "committed" else None,
        "created_at": e.at if e.type == "reserved" else None,
        "updated_at": e.at,
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
        "created_at": e.at if e.type == "committed" else None,
        "updated_at": e.at,
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
        "updated_at": e.at,
    }


def _apply_derived(conn: Connection, events: Sequence[Event]) -> None:
    """Fold the new events (in stream order) per key, then upsert each derived table once."""
    lv: dict[tuple[str, str], dict[str, Any]] = {}
    placeholders: dict[tuple[str, str], dict[str, Any]] = {}
    its: dict[str, dict[str, Any]] = {}
    rsv: dict[str, dict[str, Any]] = {}
    ords: dict[str, dict[str, Any]] = {}

    def keep_newest(acc: dict[Any, dict[str, Any]], key: Any, row: dict[str, Any]) -> None:
        old = acc.get(key)
        if old is None or _is_newer(row, old):
            acc[key] = row

    for e in events:
        for ln in e.lines:
            row = {"sku": ln.sku, "location": ln.loc, "partition": e.partition}
            row.update(zip(LEVEL_FIELDS, ln.lv, strict=True))
            row.update(ver_ms=e.ms, ver_seq=e.seq, updated_at=e.at)
            keep_newest(lv, (ln.sku, ln.loc), row)
        status = RESERVATION_STATUS.get(e.type)
        if status is not None and e.rid is not None:
            _fold_reservation(rsv, e, status)
        if e.type in ORDER_EVENTS and (orow := _order_row(e)) is not None:
            keep_newest(ords, orow["id"], orow)
        if e.type == "policy" and (irow := _item_row(e)) is not None:
            keep_newest(its, irow["sku"], irow)
            # set_item creates listed locations' levels at zero; mirror that for rebuild.
            for loc in irow["locations"]:
                placeholders[(irow["sku"], loc)] = {
                    "sku": irow["sku"],
                    "location": loc,
                    "partition": e.partition,
                    **dict.fromkeys(LEVEL_FIELDS, 0),
                    "ver_ms": 0,
                    "ver_seq": 0,
                    "updated_at": e.at,
                }

    # Rows go in key order, so two workers writing overlapping batches lock them in the
    # same order and never deadlock.
    _upsert_replace(conn, levels, ["sku", "location"], [lv[k] for k in sorted(lv)])
    missing = [placeholders[k] for k in sorted(placeholders) if k not in lv]
    if missing:
        _bulk_insert(
            conn,
            levels,
            missing,
            "declared",
            lambda stmt: stmt.on_conflict_do_nothing(index_elements=["sku", "location"]),
        )
    _upsert_replace(conn, items, ["sku"], [its[k] for k in sorted(its)])
    _upsert_reservations(conn, [rsv[k] for k in sorted(rsv)])
    _upsert_replace(conn, orders, ["id"], [ords[k] for k in sorted(ords)])


def _write(conn: Connection, events: Sequence[Event]) -> int:
    ids = _insert_events(conn, events)
    new = [e for e in events if e.key in ids]  # events is sorted: stream order per partition
    moves = _movements(new, ids)
    if moves:
        _bulk_insert(conn, ledger_movements, moves, "insert", lambda stmt: stmt)
    _apply_derived(conn, new)
    return len(new)


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


def persist_batch(engine: Engine, entries: Iterable[Entry]) -> PersistResult:
    """Write a batch of stream entries to the ledger in one transaction; exactly once.

    Args:
        engine: the ledger database.
        entries: ``(partition, stream_id, fields)`` triples, in any order.

    Returns:
        How many events were new and how many were in the ledger already
        (redelivered); entries repeated within ``entries`` count as duplicates.

    Raises:
        sqlalchemy.exc.OperationalError: the database is unreachable; nothing was
            written, retry the same batch later.
    """
    events, total = prepare(entries)
    if not events:
        return PersistResult(0, total)
    try:
        with engine.begin() as conn:
            inserted = _write(conn, events)
    except DataError:
        # A value the database refuses (an integer beyond bigint, say) would block the
        # stream forever if retried; find the culprits one by one and keep them as invalid.
        inserted = _write_isolating(engine, events)
    return PersistResult(inserted, total - inserted)


def _write_isolating(engine: Engine, events: Sequence[Event]) -> int:
    inserted = 0
    for e in events:
        try:
            with engine.begin() as conn:
                inserted += _write(conn, [e])
        except DataError as exc:
            bad = _invalid(e.partition, e.ms, e.seq, json.dumps(e.payload), str(exc.orig))
            with engine.begin() as conn:
                inserted += _write(conn, [bad])
    return inserted
