"""The durable ledger: every stream entry once, and the state derived from it.

Two kinds of tables:

* The **ledger proper**, append-only: ``ledger_events`` (one row per stream
  entry, the audit trail and the exactly-once key) and ``ledger_movements``
  (one row per line of an event: the change it made to one level and the
  level's values right after). Summing ``ledger_movements`` per level from
  zero reproduces every level (SPEC invariant 6); nothing else is needed to
  check Redis.
* **Derived state**, one row per thing, kept current by the worker so that
  ``rebuild`` can restore an empty Redis without replaying years of events:
  ``levels``, ``items``, ``reservations``, ``orders``. Each row remembers the
  stream position (``ver_ms``, ``ver_seq``) of the newest event applied to it
  and only a newer event may overwrite it. Positions are compared as integer
  pairs, never as strings (``"9-0" > "10-0"`` as text). Events of one sku,
  reservation or order all live in one partition, so their positions are
  totally ordered; a newer event can be persisted before an older one when a
  dead consumer's pending entries are reclaimed after a restart, and
  newest-wins makes the result independent of that order.

Times are ``timestamptz`` (UTC); a Redis millisecond maps to them exactly
(PostgreSQL keeps microseconds), see :func:`ms_to_dt` and :func:`dt_to_ms`.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, cast

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    SmallInteger,
    String,
    Table,
    Text,
    UniqueConstraint,
    func,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = MetaData(naming_convention=NAMING_CONVENTION)

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)


def ms_to_dt(ms: int) -> datetime:
    """Epoch milliseconds to an aware UTC datetime, exactly (no float rounding)."""
    return EPOCH + timedelta(milliseconds=ms)


def dt_to_ms(dt: datetime) -> int:
    """Inverse of :func:`ms_to_dt`; a naive datetime is taken as UTC."""
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return (dt - EPOCH) // _MS


class UTCDateTime(TypeDecorator[datetime]):
    """``timestamptz`` that always comes back aware in UTC, SQLite included."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


# JSONB on PostgreSQL (indexable, compact), JSON text on SQLite. none_as_null: a Python None is
# SQL NULL, so COALESCE works in the merge rules of the derived tables.
JsonDoc = JSON(none_as_null=True).with_variant(JSONB(none_as_null=True), "postgresql")
# SQLite only auto-increments an INTEGER PRIMARY KEY (the rowid alias).
BigId = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    metadata = metadata


class LedgerEvent(Base):
    """One stream entry, exactly once: ``(partition, stream_ms, stream_seq)`` is unique.

    The stream id ``<ms>-<seq>`` is split into two bigints so positions sort and
    compare numerically. The common fields of docs/events.md get columns for
    audit queries (everything about a reservation, an order, a customer);
    ``payload`` keeps the event verbatim. An entry whose ``e`` field is not a
    JSON object is kept with ``type = 'invalid'`` and the raw text in
    ``payload``, so it is acknowledged and visible instead of blocking the stream.
    """

    __tablename__ = "ledger_events"
    __table_args__ = (
        UniqueConstraint("partition", "stream_ms", "stream_seq"),
        Index(None, "reservation_id"),
        Index(None, "order_id"),
        Index(None, "customer_id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    partition: Mapped[int] = mapped_column(Integer)
    stream_ms: Mapped[int] = mapped_column(BigInteger)
    stream_seq: Mapped[int] = mapped_column(BigInteger)
    type: Mapped[str] = mapped_column(String(32))
    at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    reservation_id: Mapped[str | None] = mapped_column(Text)
    order_id: Mapped[str | None] = mapped_column(Text)
    customer_id: Mapped[str | None] = mapped_column(Text)
    ref: Mapped[str | None] = mapped_column(Text)
    reason: Mapped[str | None] = mapped_column(Text)
    # The API key (its id, never the secret) that made an ops change: counts, adjustments, policies.
    key_id: Mapped[str | None] = mapped_column(Text)
    payload: Mapped[dict[str, Any]] = mapped_column(JsonDoc)
    recorded_at: Mapped[datetime] = mapped_column(
        UTCDateTime, server_default=func.current_timestamp()
    )


class LedgerMovement(Base):
    """One line of an event: the change to one level (``d_*``) and its values right after.

    ``d_*`` summed per ``(sku, location)`` from zero is the level (the replay
    that ``reconcile`` checks); the after-values let an auditor read any
    level's history without summing, and make a gap in the ledger visible.
    """

    __tablename__ = "ledger_movements"
    __table_args__ = (
        UniqueConstraint("event_id", "line_no"),
        Index(None, "sku", "location"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    event_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("ledger_events.id", ondelete="CASCADE")
    )
    line_no: Mapped[int] = mapped_column(SmallInteger)
    sku: Mapped[str] = mapped_column(Text)
    location: Mapped[str] = mapped_column(Text)
    quantity: Mapped[int] = mapped_column(BigInteger)
    backordered: Mapped[int] = mapped_column(BigInteger, default=0)
    d_on_hand: Mapped[int] = mapped_column(BigInteger)
    d_reserved: Mapped[int] = mapped_column(BigInteger)
    d_committed: Mapped[int] = mapped_column(BigInteger)
    d_safety: Mapped[int] = mapped_column(BigInteger)
    on_hand: Mapped[int] = mapped_column(BigInteger)
    reserved: Mapped[int] = mapped_column(BigInteger)
    committed: Mapped[int] = mapped_column(BigInteger)
    safety: Mapped[int] = mapped_column(BigInteger)


class Level(Base):
    """Current values of one level: the after-values of the newest event that moved it."""

    __tablename__ = "levels"

    sku: Mapped[str] = mapped_column(Text, primary_key=True)
    location: Mapped[str] = mapped_column(Text, primary_key=True)
    partition: Mapped[int] = mapped_column(Integer)
    on_hand: Mapped[int] = mapped_column(BigInteger)
    reserved: Mapped[int] = mapped_column(BigInteger)
    committed: Mapped[int] = mapped_column(BigInteger)
    safety: Mapped[int] = mapped_column(BigInteger)
    ver_ms: Mapped[int] = mapped_column(BigInteger)
    ver_seq: Mapped[int] = mapped_column(BigInteger)
    updated_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class Item(Base):
    """An item's selling policy, from its newest ``policy`` event.

    The SPEC's policy fields get typed columns for queries; ``policy`` keeps the
    event's object verbatim (including ``locations``, the allocation priority
    order ``rebuild`` needs for ``locs:{sku}``), so a field added later is not lost.
    """

    __tablename__ = "items"

    sku: Mapped[str] = mapped_column(Text, primary_key=True)
    partition: Mapped[int] = mapped_column(Integer)
    backorder: Mapped[str | None] = mapped_column(String(16))
    backorder_limit: Mapped[int | None] = mapped_column(BigInteger)
    restock_date: Mapped[str | None] = mapped_column(Text)
    ships_in_days: Mapped[int | None] = mapped_column(Integer)
    low_stock_threshold: Mapped[int | None] = mapped_column(BigInteger)
    per_customer_limit: Mapped[int | None] = mapped_column(BigInteger)
    locations: Mapped[list[str] | None] = mapped_column(JsonDoc)
    policy: Mapped[dict[str, Any] | None] = mapped_column(JsonDoc)
    ver_ms: Mapped[int] = mapped_column(BigInteger)
    ver_seq: Mapped[int] = mapped_column(BigInteger)
    updated_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class Reservation(Base):
    """A reservation: ``status`` and ``expires_at`` from its newest event.

    Merge rule (worker/persist.py): the newest event sets ``status``; for the
    other columns a newer event's non-null value wins and an older one only
    fills a gap. So an ``active`` row always carries the ``expires_at`` of its
    newest ``reserved``/``extended`` event, which is what ``rebuild`` puts back
    into the hold zsets. ``lines`` is ``[{sku, loc, qty, bo}]`` from ``reserved``.
    """

    __tablename__ = "reservations"
    __table_args__ = (Index(None, "status", "expires_at"), Index(None, "customer_id"))

    id: Mapped[str] = mapped_column(Text, primary_key=True)
    partition: Mapped[int] = mapped_column(Integer)
    customer_id: Mapped[str | None] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16))
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    lines: Mapped[list[dict[str, Any]] | None] = mapped_column(JsonDoc)
    order_id: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    ver_ms: Mapped[int] = mapped_column(BigInteger)
    ver_seq: Mapped[int] = mapped_column(BigInteger)


class Order(Base):
    """An order: the snapshot carried by its newest event, replaced whole.

    ``lines`` is ``[{sku, loc, qty, fulfilled, cancelled, returned}]``; the
    open units of a line are ``qty - fulfilled - cancelled``.
    """

    __tablename__ = "orders"
    __table_args__ = (Index(None, "status"), Index(None, "reservation_id"))

    id: Mapped[str] = mapped_column(Text, primary_key=True)
    partition: Mapped[int] = mapped_column(Integer)
    reservation_id: Mapped[str | None] = mapped_column(Text)
    customer_id: Mapped[str | None] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(32))
    lines: Mapped[list[dict[str, Any]]] = mapped_column(JsonDoc)
    created_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    ver_ms: Mapped[int] = mapped_column(BigInteger)
    ver_seq: Mapped[int] = mapped_column(BigInteger)


ledger_events = cast(Table, LedgerEvent.__table__)
ledger_movements = cast(Table, LedgerMovement.__table__)
levels = cast(Table, Level.__table__)
items = cast(Table, Item.__table__)
reservations = cast(Table, Reservation.__table__)
orders = cast(Table, Order.__table__)
