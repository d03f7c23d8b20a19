"""A plain-Python reference model of flashstock (SPEC §1–§3), and helpers to observe an engine.

The model knows nothing of Redis: it keeps levels, items, reservations and
orders as dictionaries and applies the contract's rules to them. The
state-machine test (``test_model.py``) drives the engine and the model with
the same operations and compares them after every step. The helpers at the
top read an engine's state through its public API (and, for the event stream
and the clock, through the documented key schema).
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from flashstock import errors as E
from flashstock.engine import Engine

LEVEL_FIELDS = ("on_hand", "reserved", "committed", "safety_stock", "available")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

# -- observing an engine ---------------------------------------------------------------------


async def redis_now_ms(engine: Engine) -> int:
    """Redis's clock (``TIME``) in ms: the only clock expiry is judged by."""
    sec, usec = await engine.redis.time()
    return int(sec) * 1000 + int(usec) // 1000


def iso_ms(text: str) -> int:
    """Epoch milliseconds of an RFC 3339 UTC timestamp as the engine writes it."""
    dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return (dt - _EPOCH) // timedelta(milliseconds=1)


async def levels(engine: Engine, sku: str) -> dict[str, dict[str, int]]:
    """``{location: level}`` of one sku, as ``get_stock`` reports it (expired holds reaped)."""
    data = (await engine.get_stock(sku)).data
    return {lv["location"]: {f: lv[f] for f in LEVEL_FIELDS} for lv in data["locations"]}


async def all_levels(engine: Engine, skus: list[str]) -> dict[str, dict[str, dict[str, int]]]:
    return {sku: await levels(engine, sku) for sku in skus}


async def events(engine: Engine, partition: int = 0) -> list[dict[str, Any]]:
    """Every event of a partition's stream, decoded, oldest first."""
    entries = await engine.redis.xrange(engine.partitions[partition].events)
    return [json.loads(fields[b"e"]) for _, fields in entries]


async def stream_len(engine: Engine, partition: int = 0) -> int:
    return int(await engine.redis.xlen(engine.partitions[partition].events))


async def new_events(engine: Engine, since: int, partition: int = 0) -> list[dict[str, Any]]:
    """The events written after the first ``since`` ones."""
    return (await events(engine, partition))[since:]


def types(evs: list[dict[str, Any]]) -> list[str]:
    return [e["type"] for e in evs]


def replayed_levels(evs: list[dict[str, Any]]) -> dict[tuple[str, str], list[int]]:
    """Levels rebuilt from zero by adding every line's ``d`` in stream order (invariant 6)."""
    out: dict[tuple[str, str], list[int]] = {}
    for e in evs:
        for ln in e.get("lines", []):
            cur = out.setdefault((ln["sku"], ln["loc"]), [0, 0, 0, 0])
            for i, d in enumerate(ln["d"]):
                cur[i] += d
            assert cur == ln["lv"], f"event {e['type']} line {ln} does not follow from its d"
    return out


async def snapshot(engine: Engine, skus: list[str]) -> tuple[Any, int]:
    """Every level of ``skus`` and the stream length: equal snapshots mean nothing changed."""
    return await all_levels(engine, skus), await stream_len(engine)


async def backdate(engine: Engine, reservation_id: str, ms_ago: int = 1) -> int:
    """Make a hold's TTL pass now: its expires_at becomes Redis's clock minus ``ms_ago``.

    Rewrites the three places the key schema keeps a hold's expiry (the
    reservation hash, the level's holds, the sweeper's index), which is what
    the TTL running out looks like to every script. Returns the new expires_at.
    """
    keys = engine.partitions[0]
    r = engine.redis
    ex = await redis_now_ms(engine) - ms_ago
    lines = json.loads(await r.hget(keys.reservation(reservation_id), "ln"))
    await r.hset(keys.reservation(reservation_id), "ex", ex)
    for sku, loc, *_ in lines:
        await r.zadd(keys.holds(sku, loc), {reservation_id: ex}, xx=True)
    await r.zadd(keys.expiries, {reservation_id: ex}, xx=True)
    return ex


async def check_conservation(
    engine: Engine, skus: list[str], rids: list[str], oids: list[str]
) -> None:
    """Invariant 5: reserved = sum of active lines, committed = sum of open order lines."""
    want_r: Counter[tuple[str, str]] = Counter()
    want_c: Counter[tuple[str, str]] = Counter()
    for rid in rids:
        res = (await engine.get_reservation(rid)).data
        if res["status"] == "active":
            for ln in res["items"]:
                want_r[ln["sku"], ln["location"]] += ln["quantity"]
    for oid in oids:
        for ln in (await engine.get_order(oid)).data["items"]:
            assert ln["open"] == ln["quantity"] - ln["fulfilled"] - ln["cancelled"]
            assert 0 <= ln["returned"] <= ln["fulfilled"]
            want_c[ln["sku"], ln["location"]] += ln["open"]
    for sku in skus:
        for loc, lv in (await levels(engine, sku)).items():
            assert lv["reserved"] == want_r[sku, loc], (sku, loc, lv)
            assert lv["committed"] == want_c[sku, loc], (sku, loc, lv)
            assert lv["available"] == (
                lv["on_hand"] - lv["reserved"] - lv["committed"] - lv["safety_stock"]
            )
