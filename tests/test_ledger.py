"""The ledger schema and persist_batch: rows from events, exactly once, newest state wins."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Engine, select, text

from flashstock.db import current_revision, downgrade, make_engine, normalize_url, upgrade
from flashstock.db.models import (
    dt_to_ms,
    items,
    ledger_events,
    levels,
    metadata,
    ms_to_dt,
    orders,
    reservations,
)
from flashstock.worker.persist import parse_entry, persist_batch

pytest_plugins = ["conftest_ledger"]


def count(engine: Engine, table: str) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one())


def test_postgres_urls_use_psycopg3() -> None:
    assert normalize_url("postgresql://u@h/db") == "postgresql+psycopg://u@h/db"
    assert normalize_url("postgres://u@h/db") == "postgresql+psycopg://u@h/db"
    assert normalize_url("postgresql+psycopg://u@h/db") == "postgresql+psycopg://u@h/db"
    assert normalize_url("sqlite:///x.db") == "sqlite:///x.db"
    assert make_engine("postgresql://u@h/db").dialect.driver == "psycopg"


def test_milliseconds_map_to_timestamps_exactly() -> None:
    for ms in (0, 1, 1_733_250_000_123, 4_102_444_799_999):
        assert dt_to_ms(ms_to_dt(ms)) == ms
    assert ms_to_dt(1_733_250_000_123) == datetime(2024, 12, 3, 18, 20, 0, 123000, tzinfo=UTC)


def test_migrations_build_exactly_the_models(ledger_url: str) -> None:
    engine = make_engine(ledger_url)
    try:
        assert current_revision(engine) == "0002"
        with engine.connect() as conn:
            ctx = MigrationContext.configure(conn, opts={"compare_type": True})
            assert compare_metadata(ctx, metadata) == []
        downgrade(engine, "base")
        assert current_revision(engine) is None
        upgrade(engine)
        assert current_revision(engine) == "0002"
    finally:
        engine.dispose()


@pytest.mark.redis
def test_batch_persisted_once_when_redelivered(events: Any, ledger_engine: Engine) -> None:
    events.busy()
    batch = events.entries()
    first = persist_batch(ledger_engine, batch)
    assert (first.inserted, first.duplicates) == (len(batch), 0)
    snapshot = _dump(ledger_engine)
    again = persist_batch(ledger_engine, batch)
    assert (again.inserted, again.duplicates) == (0, len(batch))
    # Half old, half new: only the new half is written.
    events.count("SKU-0", 5)
    events.count("SKU-1", 6)
    mixed = persist_batch(ledger_engine, batch[-3:] + events.entries()[-2:])
    assert (mixed.inserted, mixed.duplicates) == (2, 3)
    assert _dump(ledger_engine)["ledger_events"][: len(batch)] == snapshot["ledger_events"]
    assert count(ledger_engine, "ledger_events") == len(batch) + 2


@pytest.mark.redis
def test_repeats_within_one_batch_count_as_duplicates(events: Any, ledger_engine: Engine) -> None:
    events.count("A", 10)
    events.adjust("A", 3)
    batch = events.entries()
    r = persist_batch(ledger_engine, batch + batch[:1])
    assert (r.inserted, r.duplicates) == (2, 1)


@pytest.mark.redis
def test_rows_follow_the_event_format(events: Any, ledger_engine: Engine) -> None:
    events.policy("A", locations=["default", "backroom"], low_stock_threshold=3)
    events.count("A", 10, safety=1)
    events.reserve("r1", [("A", 2)], cust="alice", ttl_ms=60_000)
    events.reserve("r2", [("A", 1)])
    events.extend("r2", 120_000)
    events.reserve("r3", [("A", 1)])
    events.release("r3")
    events.reserve("r4", [("A", 1)])
    events.expire("r4")
    events.commit("r1", "o1")
    events.fulfill("o1", 1)
    persist_batch(ledger_engine, events.entries())

    with ledger_engine.connect() as conn:
        lv = conn.execute(select(levels).where(levels.c.location == "default")).one()
        assert [lv.on_hand, lv.reserved, lv.committed, lv.safety] == events.level("A")
        assert [lv.on_hand, lv.reserved, lv.committed, lv.safety] == [9, 1, 1, 1]
        backroom = conn.execute(select(levels).where(levels.c.location == "backroom")).one()
        assert [backroom.on_hand, backroom.reserved] == [0, 0]

        rsv = {r.id: r for r in conn.execute(select(reservations))}
        assert {k: r.status for k, r in rsv.items()} == {
            "r1": "committed",
            "r2": "active",
            "r3": "released",
            "r4": "expired",
        }
        assert rsv["r1"].order_id == "o1" and rsv["r1"].customer_id == "alice"
        assert rsv["r1"].lines == [{"sku": "A", "loc": "default", "qty": 2, "bo": 0}]
        # An active hold keeps the expires_at of its newest event, to the millisecond.
        assert dt_to_ms(rsv["r2"].expires_at) == events.reservations["r2"]["exp"]
        assert rsv["r2"].customer_id is None

        order = conn.execute(select(orders)).one()
        assert (order.id, order.reservation_id, order.customer_id) == ("o1", "r1", "alice")
        assert order.status == "partially_fulfilled"
        assert order.lines == [
            {
                "sku": "A",
                "loc": "default",
                "qty": 2,
                "fulfilled": 1,
                "cancelled": 0,
                "returned": 0,
            }
        ]
        item = conn.execute(select(items)).one()
        assert (item.backorder, item.low_stock_threshold) == ("deny", 3)
        assert item.locations == ["default", "backroom"]

        ev = conn.execute(select(ledger_events).where(ledger_events.c.type == "committed")).one()
        assert (ev.reservation_id, ev.order_id, ev.customer_id) == ("r1", "o1", "alice")
        assert ev.payload["order"]["status"] == "open"
        assert ev.at.tzinfo is not None


@pytest.mark.redis
def test_replaying_movements_gives_every_level(events: Any, ledger_engine: Engine) -> None:
    events.busy(skus=4, rounds=40)
    persist_batch(ledger_engine, events.entries())
    with ledger_engine.connect() as conn:
        sums = conn.execute(
            text(
                "SELECT sku, location, sum(d_on_hand), sum(d_reserved), sum(d_committed),"
                " sum(d_safety) FROM ledger_movements GROUP BY sku, location"
            )
        ).all()
        table = {
            (r.sku, r.location): [r.on_hand, r.reserved, r.committed, r.safety]
            for r in conn.execute(select(levels))
        }
    assert len(sums) == 4
    for sku, loc, *d in sums:
        assert [int(x) for x in d] == events.level(sku, loc) == table[(sku, loc)]


@pytest.mark.redis
def test_an_older_event_persisted_late_never_overwrites_a_newer_one(
    events: Any, ledger_engine: Engine
) -> None:
    events.busy(skus=3, rounds=30)
    batch = events.entries()
    # Newest half first (as after a restart that reads new entries before reclaiming the
    # dead worker's), then the oldest half, in pieces.
    half = len(batch) // 2
    persist_batch(ledger_engine, batch[half:])
    for i in range(0, half, 7):
        persist_batch(ledger_engine, batch[i : i + 7])
    out_of_order = _dump(ledger_engine)
    with ledger_engine.begin() as conn:
        for t in ("ledger_movements", "ledger_events", "levels", "items", "reservations", "orders"):
            conn.execute(text(f"DELETE FROM {t}"))
    persist_batch(ledger_engine, batch)
    in_order = _dump(ledger_engine)
    for t in ("levels", "items", "reservations", "orders"):
        assert out_of_order[t] == in_order[t], t


def test_bad_entries_are_kept_as_invalid_and_do_not_block(ledger_engine: Engine) -> None:
    good = {"type": "counted", "at": 1, "reason": "count"}
    good["lines"] = [
        {"sku": "A", "loc": "default", "qty": 4, "d": [4, 0, 0, 0], "lv": [4, 0, 0, 0]}
    ]
    huge = {"type": "adjusted", "at": 2, "reason": "received"}
    huge["lines"] = [
        {"sku": "A", "loc": "x", "qty": 10**30, "d": [10**30, 0, 0, 0], "lv": [10**30, 0, 0, 0]}
    ]
    batch = [
        (0, b"100-0", {b"e": json.dumps(good).encode()}),
        (0, b"101-0", {b"e": b"{not json"}),
        (0, b"102-0", {b"other": b"field"}),
        (0, b"103-0", {b"e": b"[1, 2]"}),
        (0, b"104-0", {b"e": json.dumps(huge).encode()}),
        (0, "105-0", {"e": json.dumps(good)}),  # a client with decode_responses=True
    ]
    r = persist_batch(ledger_engine, batch)
    assert (r.inserted, r.duplicates) == (6, 0)
    with ledger_engine.connect() as conn:
        kinds = [row.type for row in conn.execute(select(ledger_events).order_by("stream_ms"))]
        assert kinds == ["counted", "invalid", "invalid", "invalid", "adjusted", "counted"]
        # The out-of-range line is not a movement; the event is still on record.
        assert count(ledger_engine, "ledger_movements") == 2
    assert parse_entry(0, b"1-0", {b"e": b"{bad"}).payload["raw"] == "{bad"


def _dump(engine: Engine) -> dict[str, list[tuple]]:
    out = {}
    with engine.connect() as conn:
        for t, order in (
            ("ledger_events", "partition, stream_ms, stream_seq"),
            ("levels", "sku, location"),
            ("items", "sku"),
            ("reservations", "id"),
            ("orders", "id"),
        ):
            rows = conn.execute(text(f"SELECT * FROM {t} ORDER BY {order}")).mappings().all()
            out[t] = [
                tuple(v for k, v in r.items() if k not in ("id", "recorded_at")) for r in rows
            ]
    return out


def _dump_with_movements(engine: Engine) -> dict[str, list[tuple]]:
    out = _dump(engine)
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT e.partition, e.stream_ms, e.stream_seq, m.* FROM ledger_movements m"
                " JOIN ledger_events e ON e.id = m.event_id"
                " ORDER BY e.partition, e.stream_ms, e.stream_seq, m.line_no"
            )
        ).mappings()
        out["ledger_movements"] = [
            tuple(v for k, v in r.items() if k not in ("id", "event_id")) for r in rows
        ]
    return out


@pytest.mark.redis
@pytest.mark.postgres
def test_copy_writer_writes_what_the_insert_writer_writes(events: Any, pg_engine: Engine) -> None:
    """PostgreSQL's COPY writer against the multi-row INSERT one, on the same deliveries:
    every event kind, batches redelivered and out of order, bad and out-of-range entries."""
    events.busy(skus=4, rounds=40)
    batch = events.entries()
    huge = {"type": "adjusted", "at": 2, "reason": "received", "lines": [
        {"sku": "A", "loc": "x", "qty": 10**30, "d": [10**30, 0, 0, 0], "lv": [10**30, 0, 0, 0]}
    ]}  # fmt: skip
    bad = [(0, b"1-0", {b"e": b"{not json"}), (0, b"2-0", {b"e": json.dumps(huge).encode()})]
    half = len(batch) // 2
    deliveries = [batch[half:], bad, *(batch[i : i + 9] for i in range(0, half, 9)), batch]

    dumps, results = [], []
    for copy in (False, True):
        with pg_engine.begin() as conn:
            conn.execute(
                text(
                    "TRUNCATE ledger_movements, ledger_events, levels, items, reservations,"
                    " orders RESTART IDENTITY"
                )
            )
        results.append([persist_batch(pg_engine, d, copy=copy) for d in deliveries])
        dumps.append(_dump_with_movements(pg_engine))
    assert results[0] == results[1]
    assert results[1][-1].inserted == 0  # the whole stream again: all duplicates
    assert dumps[0] == dumps[1]
    assert len(dumps[1]["ledger_events"]) == len(batch) + 2
    lines = sum(len(json.loads(f[b"e"]).get("lines", [])) for _, _, f in batch)
    assert len(dumps[1]["ledger_movements"]) == lines > 0
