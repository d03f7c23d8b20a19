"""Warming: load stock files (or the ledger's levels) into Redis, safely on a live store.

Only ``on_hand``, ``safety_stock`` and item policies are written; reserved and
committed units are never touched. Every row is validated before the first
write, so a file with a bad row changes nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any, BinaryIO

from flashstock.engine import Engine, check_policy
from flashstock.errors import InvalidRequest
from flashstock.stockfiles import (
    ParseResult,
    RowError,
    StockFileError,
    StockRow,
    parse_stock_file,
)
from flashstock.validation import id_problem, quantity_problem

CONCURRENCY = 64
MAX_REPORTED = 100


def _error_dict(e: RowError) -> dict[str, Any]:
    return {"line": e.line, "column": e.column, "message": e.message}


@dataclass
class Change:
    sku: str
    location: str
    on_hand_before: int | None
    on_hand_after: int


@dataclass
class WarmReport:
    format: str
    dry_run: bool
    rows: int = 0
    levels_changed: int = 0
    levels_unchanged: int = 0
    policies: int = 0
    skipped: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    changes: list[Change] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["changes"] = d["changes"][:1000]
        return d


def _validate(rows: Iterable[StockRow], high: int) -> list[RowError]:
    errors = []
    for r in rows:
        for what, value in (("sku", r.sku), ("location", r.location)):
            if p := id_problem(value, what):
                errors.append(RowError(r.line, what, p))
        for what, value in (("on_hand", r.on_hand), ("safety_stock", r.safety_stock)):
            if value is not None and (p := quantity_problem(value, what, low=0, high=high)):
                errors.append(RowError(r.line, what, p))
        try:
            check_policy(r.policy, high)
        except InvalidRequest as exc:
            errors.append(RowError(r.line, exc.details.get("field"), exc.message))
    return errors


async def _current(engine: Engine, rows: list[StockRow]) -> list[int | None]:
    async with engine.redis.pipeline(transaction=False) as pipe:
        for r in rows:
            pipe.hget(engine.keys_for(r.sku).level(r.sku, r.location), "on_hand")
        return [None if v is None else int(v) for v in await pipe.execute()]


async def warm_rows(
    engine: Engine, parsed: ParseResult, *, dry_run: bool = False, by: str | None = None
) -> WarmReport:
    """Apply parsed rows (all of them, or none when any row is invalid); ``by``: the API key."""
    errors = list(parsed.errors) + _validate(parsed.rows, engine.settings.max_quantity)
    if errors:
        raise InvalidRequest(
            f"{len(errors)} bad row(s); nothing was applied",
            errors=[
                {"line": e.line, "column": e.column, "message": e.message} for e in errors[:100]
            ],
        )
    # A row that neither counts stock nor sets a policy (stock not tracked by the platform)
    # has nothing to load: flashstock sells tracked stock only.
    untracked = [r for r in parsed.rows if r.on_hand is None and not r.policy]
    rows = [r for r in parsed.rows if r.on_hand is not None or r.policy]
    report = WarmReport(
        parsed.format, dry_run, rows=len(rows),
        skipped=[asdict(s) for s in parsed.skipped]
        + [{"line": r.line, "sku": r.sku, "reason": "stock not tracked: nothing to load"}
           for r in untracked],
        notes=list(parsed.notes),
    )  # fmt: skip
    levels = [r for r in rows if r.on_hand is not None]
    before = await _current(engine, levels)
    for r, old in zip(levels, before, strict=True):
        assert r.on_hand is not None
        if old == r.on_hand:
            report.levels_unchanged += 1
        else:
            report.levels_changed += 1
            report.changes.append(Change(r.sku, r.location, old, r.on_hand))
    report.policies = sum(1 for r in rows if r.policy)
    if dry_run:
        return report

    gate = asyncio.Semaphore(CONCURRENCY)

    async def apply(r: StockRow) -> None:
        async with gate:
            if r.policy:
                await engine.set_item(r.sku, dict(r.policy), merge=True, by=by)
            if r.on_hand is not None:
                await engine.set_on_hand(
                    r.sku, r.location, r.on_hand, safety_stock=r.safety_stock, by=by
                )

    await asyncio.gather(*(apply(r) for r in rows))
    return report


async def warm_bytes(
    engine: Engine,
    data: bytes | BinaryIO,
    *,
    format: str | None = None,
    dry_run: bool = False,
    by: str | None = None,
    max_rows: int | None = None,
) -> WarmReport:
    try:
        # In a thread: a large file must not stall the event loop serving reservations.
        parsed = await asyncio.to_thread(
            parse_stock_file,
            data,
            format,
            max_quantity=engine.settings.max_quantity,
            max_rows=max_rows,
        )
    except StockFileError as exc:
        raise InvalidRequest(
            str(exc), errors=[_error_dict(e) for e in exc.errors[:MAX_REPORTED]]
        ) from exc
    except ValueError as exc:
        raise InvalidRequest(str(exc)) from exc
    return await warm_rows(engine, parsed, dry_run=dry_run, by=by)


def _rows_from_db(url: str) -> list[StockRow]:
    from sqlalchemy import select

    from flashstock.db import make_engine
    from flashstock.db.models import Item, Level

    db = make_engine(url)
    try:
        with db.connect() as conn:
            items = {
                i.sku: {
                    "backorder": i.backorder,
                    "backorder_limit": i.backorder_limit,
                    "restock_date": i.restock_date,
                    "ships_in_days": i.ships_in_days,
                    "low_stock_threshold": i.low_stock_threshold,
                    "per_customer_limit": i.per_customer_limit,
                }  # fmt: skip
                for i in conn.execute(select(Item))
            }
            levels = conn.execute(select(Level).order_by(Level.sku, Level.location)).all()
    finally:
        db.dispose()
    rows, seen = [], set()
    for n, lv in enumerate(levels, start=1):
        policy = {k: v for k, v in items.get(lv.sku, {}).items() if v is not None}
        if lv.sku in seen:
            policy = {}
        seen.add(lv.sku)
        rows.append(StockRow(n, lv.sku, lv.location, lv.on_hand, lv.safety, policy))
    return rows


async def warm_from_db(engine: Engine, url: str, *, dry_run: bool = False) -> WarmReport:
    """Set every level's on_hand and safety stock, and every policy, from the ledger."""
    rows = await asyncio.to_thread(_rows_from_db, url)
    return await warm_rows(engine, ParseResult("ledger", rows, [], [], []), dry_run=dry_run)
