"""Edges of the engine contract: script refusals as typed errors, long TTLs, empty line lists,
ids across partitions, and the sold-out memory never outliving a hold's TTL."""

from __future__ import annotations

import pytest
from reference import backdate, iso_ms, line, redis_now_ms, snapshot

from flashstock import errors as E
from flashstock.engine import Engine
from flashstock.keys import partition_of

# -- a script's INVALID refusal ----------------------------------------------------------------


def test_a_refusal_with_a_message_detail_is_typed():
    exc = E.refusal(E.RefusalCode.INVALID, {"message": "bad arguments"})
    assert isinstance(exc, E.InvalidRequest) and exc.status == 422


async def test_a_ttl_the_settings_allow_is_honoured(engine, settings):
    e = Engine(engine.redis, settings.model_copy(update={"max_ttl_seconds": 30 * 86_400}))
    await e.set_on_hand("A", "default", 5)
    t0 = await redis_now_ms(e)
    r = await e.reserve([line("A", 1)], reservation_id="r1", ttl_seconds=25 * 86_400)
    assert iso_ms(r.data["expires_at"]) >= t0 + 25 * 86_400_000
    r = await e.extend("r1", 30 * 86_400)
    assert iso_ms(r.data["expires_at"]) >= t0 + 30 * 86_400_000


# -- an explicit empty list of lines -----------------------------------------------------------


@pytest.mark.parametrize("op", ["fulfill", "cancel"])
async def test_an_empty_line_list_is_not_every_line(engine, op):
    await engine.set_on_hand("A", "default", 5)
    await engine.reserve([line("A", 3)], reservation_id="r1")
    await engine.commit("r1", "o1")
    before = await snapshot(engine, ["A"])
    with pytest.raises(E.InvalidRequest):
        await getattr(engine, op)("o1", [])
    assert await snapshot(engine, ["A"]) == before


# -- ids are unique across partitions ----------------------------------------------------------


def two_partitions_skus():
    out = {}
    for i in range(1000):
        out.setdefault(partition_of(f"S{i}", 4), f"S{i}")
    return list(out.values())[:2]


@pytest.fixture
async def split_engine(engine, settings):
    """Four partitions, a sku stocked in each of two, a reservation held on each."""
    e = Engine(engine.redis, settings.model_copy(update={"partitions": 4}))
    a, b = two_partitions_skus()
    for i, sku in enumerate((a, b)):
        await e.set_on_hand(sku, "default", 10)
        await e.reserve([line(sku, 2)], reservation_id=f"r{i}")
        await e.reserve([line(sku, 2)], reservation_id=f"s{i}")
    await e.commit("r0", "O")
    e.test_skus = (a, b)
    return e


async def test_an_order_id_is_unique_across_partitions(split_engine):
    e = split_engine
    before = await snapshot(e, list(e.test_skus))
    with pytest.raises(E.IdempotencyConflict):
        await e.commit("r1", "O")
    assert await snapshot(e, list(e.test_skus)) == before
    assert (await e.get_order("O")).data["reservation_id"] == "r0"


async def test_a_fulfillment_id_is_unique_across_partitions(split_engine):
    e = split_engine
    await e.commit("r1", "P")
    await e.fulfill("O", fulfillment_id="F")
    before = await snapshot(e, list(e.test_skus))
    with pytest.raises(E.IdempotencyConflict):
        await e.fulfill("P", fulfillment_id="F")
    assert await snapshot(e, list(e.test_skus)) == before


async def test_an_adjustment_id_is_unique_across_partitions(split_engine):
    e = split_engine
    a, b = e.test_skus
    await e.set_on_hand(a, "default", 7, adjustment_id="ADJ")
    before = await snapshot(e, [a, b])
    with pytest.raises(E.IdempotencyConflict):
        await e.set_on_hand(b, "default", 7, adjustment_id="ADJ")
    assert await snapshot(e, [a, b]) == before


# -- the sold-out memory and exact expiry ------------------------------------------------------


async def redis_now_us(engine) -> int:
    sec, usec = await engine.redis.time()
    return int(sec) * 1_000_000 + int(usec)


@pytest.mark.redis
async def test_no_sold_out_answer_once_a_ttl_has_passed(real_engine):
    """Buyers refused right up to a hold's expiry are never refused once it has passed."""
    e = real_engine
    late = []  # (trial, Redis time an attempt was refused at, past the expiry by so many µs)
    for trial in range(20):
        sku = f"A{trial}"
        await e.set_on_hand(sku, "default", 3)
        await e.reserve([line(sku, 3)], reservation_id=f"h{trial}", ttl_seconds=600)
        ex_us = await backdate(e, f"h{trial}", ms_ago=-30) * 1000  # its TTL ends in 30 ms
        while True:
            start = await redis_now_us(e)
            try:
                got = await e.reserve([line(sku, 2)])  # no reservation id: memory may answer
            except E.InsufficientStock:
                if start >= ex_us:
                    late.append((trial, start - ex_us))
                continue
            assert got.created and await redis_now_us(e) >= ex_us  # never before the TTL
            break
    assert late == []
