"""The PostgreSQL writer: a batch goes in by ``COPY``, and into the ledger by set-based SQL.

Why: profiled while draining, the worker spent most of its time building
parameters for multi-row INSERTs (a dict per row, then psycopg's array dumper
in Python, then SQLAlchemy). Here a row costs the worker one tuple, which
psycopg's C code formats straight into the ``COPY`` stream, and the server one
``INSERT … SELECT`` per table. The merge rules are the ones the SQLAlchemy
writer uses (:mod:`flashstock.worker.persist` builds the ``ON CONFLICT`` clauses
for both), and so is the Python that folds events into derived rows.

Per batch, inside the caller's transaction:

1. ``COPY`` the events and their lines into temporary tables;
2. ``INSERT INTO ledger_events … SELECT … ON CONFLICT DO NOTHING RETURNING`` the
   new events' ids into a third one (a data-modifying CTE: nothing comes back to
   Python but the count, which says whether every event of the batch was new);
3. ``INSERT INTO ledger_movements`` the lines of the new events, found by joining
   on the stream position;
4. fold the new events into derived rows, ``COPY`` each table's rows into its
   temporary table and ``INSERT … SELECT … ON CONFLICT`` them.

The temporary tables belong to the session (``CREATE … IF NOT EXISTS`` at the
start of every batch) and are emptied by every commit (``ON COMMIT DELETE
ROWS``); a batch rolled back leaves nothing in them either. Times travel as epoch
milliseconds and become ``timestamptz`` in SQL exactly (the whole seconds by
``to_timestamp``, the rest as an interval: no float rounding). JSON travels as
text and the server parses it; an event's payload is the stream entry's text.

psycopg's own errors from a ``COPY`` are raised as SQLAlchemy's (``DataError``,
``OperationalError``, …), so the caller retries and isolates bad values exactly
as with the other writer.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import orjson
import psycopg
from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    Connection,
    Integer,
    MetaData,
    Table,
    and_,
    cast,
    insert,
    literal_column,
    select,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.exc import DBAPIError
from sqlalchemy.schema import CreateTable
from sqlalchemy.sql.elements import ColumnElement

from flashstock.db.models import (
    items,
    ledger_events,
    ledger_movements,
    levels,
    orders,
    reservations,
)
from flashstock.worker.persist import (
    EVENT_COLUMNS,
    EVENT_KEY,
    MOVEMENT_COLUMNS,
    Event,
    Upsert,
    derived,
    events_clause,
    movements,
    time_columns,
)

_DIALECT = postgresql.dialect()  # type: ignore[no-untyped-call]
_STAGING = MetaData()


def _carried_as(col: Column[Any]) -> Any:
    """How a value of ``col`` travels in the COPY stream: times as ms, JSON as text."""
    if col.name in time_columns(col.table):  # type: ignore[arg-type]
        return BigInteger()
    if isinstance(col.type, JSON):
        return postgresql.TEXT()
    return col.type


def _staging(name: str, source: Table, columns: Sequence[str], *extra: Column[Any]) -> Table:
    return Table(
        name,
        _STAGING,
        *extra,
        *(Column(c, _carried_as(source.c[c])) for c in columns),
        prefixes=["TEMPORARY"],
        postgresql_on_commit="DELETE ROWS",
    )


def _position() -> list[Column[Any]]:
    return [Column("partition", Integer), Column("stream_ms", BigInteger),
            Column("stream_seq", BigInteger)]  # fmt: skip


EVENTS = _staging("fs_batch_events", ledger_events, EVENT_COLUMNS)
LINES = _staging("fs_batch_lines", ledger_movements, MOVEMENT_COLUMNS, *_position())
NEW = Table(
    "fs_batch_new", _STAGING, Column("id", BigInteger), *_position(),
    prefixes=["TEMPORARY"], postgresql_on_commit="DELETE ROWS",
)  # fmt: skip
# One per upsert of persist.derived(), with all of its table's columns (an upsert copies
# the ones its rows have).
DERIVED = {
    name: _staging(f"fs_batch_{name.replace(' ', '_')}", t, [c.name for c in t.columns])
    for name, t in (("reservations", reservations), ("orders", orders), ("items", items),
                    ("levels", levels), ("declared levels", levels))
}  # fmt: skip
# Made in every batch's own transaction when missing: they then exist whatever the
# connection is, a pooled one, a new one after a restart, or one a pooler like PgBouncer
# hands out per transaction.
CREATE_STAGING = ";\n".join(
    str(CreateTable(t, if_not_exists=True).compile(dialect=_DIALECT))
    for t in (EVENTS, LINES, NEW, *DERIVED.values())
)


# --- statements, compiled once ---------------------------------------------------------------


def _ms_to_timestamptz(name: str) -> ColumnElement[Any]:
    q = _DIALECT.identifier_preparer.quote(name)
    return literal_column(f"to_timestamp({q} / 1000) + mod({q}, 1000) * interval '1 millisecond'")


def _read(stage: Table, target: Table, name: str) -> ColumnElement[Any]:
    """A staged column as the target column's type."""
    if name in time_columns(target):
        return _ms_to_timestamptz(name)
    if isinstance(target.c[name].type, JSON):
        return cast(stage.c[name], JSONB)
    return stage.c[name]


def _sql(stmt: Any) -> str:
    return str(stmt.compile(dialect=_DIALECT))


def _insert_events_sql() -> str:
    e = ledger_events
    rows = (
        select(*(_read(EVENTS, e, c) for c in EVENT_COLUMNS))
        .select_from(EVENTS)
        .order_by(*(EVENTS.c[k] for k in EVENT_KEY))
    )
    new = (
        events_clause(pg_insert(e).from_select(EVENT_COLUMNS, rows))
        .returning(e.c.id, e.c.partition, e.c.stream_ms, e.c.stream_seq)
        .cte("new")
    )
    return _sql(insert(NEW).from_select([c.name for c in NEW.c], select(new)))


def _insert_movements_sql() -> str:
    on = and_(*(LINES.c[k] == NEW.c[k] for k in EVENT_KEY))
    rows = select(NEW.c.id, *(LINES.c[c] for c in MOVEMENT_COLUMNS)).select_from(
        LINES.join(NEW, on)
    )
    return _sql(insert(ledger_movements).from_select(["event_id", *MOVEMENT_COLUMNS], rows))


INSERT_EVENTS = _insert_events_sql()
INSERT_MOVEMENTS = _insert_movements_sql()
NEW_KEYS = _sql(select(*(NEW.c[k] for k in EVENT_KEY)))
_UPSERTS: dict[tuple[str, tuple[str, ...]], str] = {}


def _upsert_sql(up: Upsert) -> str:
    key = (up.name, up.columns)
    sql = _UPSERTS.get(key)
    if sql is None:
        stage = DERIVED[up.name]
        # Byte order ("C") is Python's str order: rows are locked in the order persist sorted
        # them, whichever writer a worker runs.
        order = [stage.c[k].collate("C") for k in up.keys]
        rows = select(*(_read(stage, up.table, c) for c in up.columns)).select_from(stage)
        stmt = up.clause(pg_insert(up.table).from_select(up.columns, rows.order_by(*order)))
        sql = _UPSERTS[key] = _sql(stmt)
    return sql


# --- COPY ------------------------------------------------------------------------------------


@contextmanager
def _sqlalchemy_errors(statement: str) -> Iterator[None]:
    """psycopg's errors as SQLAlchemy raises them for its own statements."""
    try:
        yield
    except psycopg.Error as exc:
        raise DBAPIError.instance(statement, None, exc, psycopg.Error) from exc


def _cursor(conn: Connection) -> psycopg.Cursor[Any]:
    return conn.connection.driver_connection.cursor()  # type: ignore[union-attr,no-any-return]


def _create_staging(conn: Connection) -> None:
    # Several statements in one round trip: psycopg's cursor, without parameters.
    with _sqlalchemy_errors(CREATE_STAGING), _cursor(conn) as cur:
        cur.execute(CREATE_STAGING)  # type: ignore[arg-type]


def _copy(conn: Connection, table: Table, columns: Sequence[str], rows: Iterable[Any]) -> None:
    names = ", ".join(_DIALECT.identifier_preparer.quote(c) for c in columns)
    statement = f"COPY {table.name} ({names}) FROM STDIN"
    with _sqlalchemy_errors(statement), _cursor(conn) as cur, cur.copy(statement) as copy:  # type: ignore[arg-type]
        for row in rows:
            copy.write_row(row)


def _json(v: Any) -> str | None:
    return None if v is None else _dumps(v)


def _event_rows(events: Sequence[Event]) -> Iterator[tuple[Any, ...]]:
    for e in events:
        # The entry's own text when it parsed as is; an invalid entry's record otherwise.
        yield e.values(e.text if e.text is not None else _dumps(e.payload))


def _dumps(v: Any) -> str:
    try:
        return orjson.dumps(v).decode()
    except TypeError:  # an integer beyond 64 bits, kept verbatim in an invalid event
        return json.dumps(v)


def _line_rows(events: Sequence[Event]) -> Iterator[tuple[Any, ...]]:
    for e in events:
        yield from movements(e, e.partition, e.ms, e.seq)


def _derived_rows(up: Upsert) -> Iterator[list[Any]]:
    json_at = [i for i, c in enumerate(up.columns) if isinstance(up.table.c[c].type, JSON)]
    for r in up.rows:
        values = list(r.values())
        for i in json_at:
            values[i] = _json(values[i])
        yield values


# --- one batch -------------------------------------------------------------------------------


def write(conn: Connection, events: Sequence[Event]) -> int:
    """Write sorted events in the connection's transaction; returns how many were new."""
    _create_staging(conn)
    _copy(conn, EVENTS, EVENT_COLUMNS, _event_rows(events))
    _copy(conn, LINES, [*EVENT_KEY, *MOVEMENT_COLUMNS], _line_rows(events))
    inserted = conn.exec_driver_sql(INSERT_EVENTS).rowcount
    if inserted == 0:
        return 0
    conn.exec_driver_sql(INSERT_MOVEMENTS)
    new = events
    if inserted < len(events):  # some were redelivered: only the new ones have effects
        keys = {tuple(r) for r in conn.exec_driver_sql(NEW_KEYS)}
        new = [e for e in events if e.key in keys]
    for up in derived(new):
        _copy(conn, DERIVED[up.name], up.columns, _derived_rows(up))
        conn.exec_driver_sql(_upsert_sql(up))
    return inserted
