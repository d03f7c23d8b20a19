"""Random operation sequences against the engine and the reference model, compared every step.

Time: the engine judges expiry by Redis's ``TIME``, so the machine reads that
clock too. Before each step it reads ``t0``; if a live hold would expire within
``GUARD_MS`` it first sleeps past that moment, so no hold's expiry falls inside
a step (which would make the step's outcome depend on microseconds). The model
then expires every hold with ``expires_at <= t0``. Holds expire by their real
TTL (1 s ones, with a wait of at most a second once in some examples) and by
``backdate`` (the TTL passing at once, see ``reference.backdate``).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from collections import Counter
from typing import Any

import fakeredis
import pytest
import redis.asyncio as aredis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from reference import Model, Reservation, backdate, iso_ms, replayed_levels
from support import REDIS_URL, need_redis

from flashstock import errors as E
from flashstock.engine import Engine
from flashstock.settings import Settings

GUARD_MS = 400
SKUS = ["A", "B", "C:x"]
LOCS = {"A": ["w1", "w2"], "B": ["w1", "w2"], "C:x": ["w1"]}  # where counts may go
CUSTOMERS = [None, "c1", "c2"]
EXAMPLES = int(os.environ.get("FLASHSTOCK_MODEL_EXAMPLES", "60"))

quantities = st.integers(1, 3)


def open_units(ln):  # an order line: [sku, location, quantity, fulfilled, cancelled, returned]
    return ln[2] - ln[3] - ln[4]


def returnable_units(ln):
    return ln[3] - ln[5]


triple_locs = st.sampled_from([None, None, "w1", "w1", "w2"])


class EngineVsModel(RuleBasedStateMachine):
    loop: asyncio.AbstractEventLoop
    client: Any

    def __init__(self) -> None:
        super().__init__()
        self.settings = Settings(key_prefix="fst" + uuid.uuid4().hex[:10])
        self.engine = Engine(self.client, self.settings)
        self.model = Model()
        self.seq = 0
        self.waited = False
        self.real_clock = False
        self.stream_pos = "-"
        self.stream: list[dict[str, Any]] = []
        self.refs: dict[str, list[str]] = {"adj": [], "ful": [], "ret": []}
        self.t0 = 0

    # -- plumbing -------------------------------------------------------------------------

    def run(self, coro):
        return self.loop.run_until_complete(coro)

    def now(self) -> int:
        sec, usec = self.run(self.client.time())
        return int(sec) * 1000 + int(usec) // 1000

    def fresh(self, kind: str) -> str:
        self.seq += 1
        return f"{kind}{self.seq}"

    def live_expiries(self) -> list[int]:
        return [r.ex for r in self.model.reservations.values() if r.status == "active"]

    def begin(self) -> int:
        """Redis's time for this step, after waiting out any expiry about to happen."""
        t0 = self.now()
        soon = [ex for ex in self.live_expiries() if t0 < ex <= t0 + GUARD_MS]
        if soon:
            time.sleep((max(soon) - t0 + 5) / 1000)
            t0 = self.now()
        self.t0 = t0
        self.model.expire_due(t0)
        return t0

    def no_expiry_since(self, t0: int) -> None:
        """No live hold's expiry fell between ``t0`` and now (the clock guard was wide enough)."""
        now = self.now()
        assert not [ex for ex in self.live_expiries() if t0 < ex <= now], "step slower than guard"

    def both(self, engine_call, model_call):
        """Run one operation on both; they must agree on success or on the refusal's class."""
        try:
            want = model_call()
        except E.FlashstockError as exc:
            want = exc
        try:
            got = self.run(engine_call())
        except E.FlashstockError as exc:
            got = exc
        self.no_expiry_since(self.t0)
        if isinstance(want, Exception) or isinstance(got, Exception):
            assert type(got) is type(want), f"engine: {got!r}, model: {want!r}"
            return None, None
        return got, want

    def ex_of(self, reply, ttl_ms: int) -> int:
        ex = iso_ms(reply.data["expires_at"])
        assert self.t0 + ttl_ms <= ex <= self.now() + ttl_ms, "expires_at is Redis time + TTL"
        return ex

    def pick(self, data, kind: str, every, preferred=(), new: int = 1) -> str:
        """An id: ``new`` times in 20 a fresh one, else mostly a preferred one, or any known one."""
        roll = data.draw(st.sampled_from(range(20)))
        if roll >= 20 - new or not every:
            return self.fresh(kind)
        pool = preferred if preferred and roll < 16 else every
        return data.draw(st.sampled_from(sorted(pool)))

    def rids(self, *statuses: str) -> list[str]:
        return [r.rid for r in self.model.reservations.values() if r.status in statuses]

    def oids(self, room) -> list[str]:
        return [o.oid for o in self.model.orders.values() if any(room(ln) > 0 for ln in o.lines)]

    def triples(self, data, min_size=1):
        raw = data.draw(
            st.lists(
                st.tuples(st.sampled_from(SKUS), triple_locs, quantities),
                min_size=min_size,
                max_size=3,
            )
        )
        return [{"sku": s, "location": loc, "quantity": q} for s, loc, q in raw]

    def order_triples(self, data, oid, room=None):
        """None (every open unit) or 1–2 lines of the order: mostly within ``room``, sometimes
        one unit more, sometimes at another location."""
        o = self.model.orders.get(oid)
        if o is None or (room is None and data.draw(st.booleans())):
            return None if room is None else self.triples(data)
        room = room or open_units
        lines = []
        for _ in range(data.draw(st.integers(1, 2))):
            ln = data.draw(st.sampled_from([ln for ln in o.lines if room(ln) > 0] or o.lines))
            loc = data.draw(st.sampled_from([None, ln[1], ln[1], "w1", "w2"]))
            q = data.draw(st.sampled_from(range(1, max(1, room(ln)) + 2)))
            lines.append({"sku": ln[0], "location": loc, "quantity": q})
        return lines

    @staticmethod
    def as_model(lines):
        return [(ln["sku"], ln["location"] or "", ln["quantity"]) for ln in lines]

    # -- setup ----------------------------------------------------------------------------

    @initialize(data=st.data())
    def setup(self, data):
        self.real_clock = data.draw(st.integers(0, 2)) == 0
        e, m = self.engine, self.model
        self.run(e.set_item("A", {}, locations=["w2", "w1"]))
        m.set_item("A", locations=["w2", "w1"])
        self.run(e.set_item("B", {"backorder": "allow", "backorder_limit": 3,
                                  "low_stock_threshold": 2}))  # fmt: skip
        m.set_item("B", backorder="allow", backorder_limit=3, low_stock_threshold=2)
        self.run(e.set_item("C:x", {"per_customer_limit": 3}))
        m.set_item("C:x", per_customer_limit=3)
        for sku, loc in (("A", "w1"), ("A", "w2"), ("B", "w1"), ("C:x", "w1")):
            n = data.draw(st.integers(0, 9))
            self.run(e.set_on_hand(sku, loc, n))
            m.set_on_hand(sku, loc, n)

    # -- operations (each: begin, both, compare the reply) -------------------------------

    def do_reserve(self, rid, lines, customer, ttl, split) -> bool:
        self.begin()
        got, want = self.both(
            lambda: self.engine.reserve(
                lines, reservation_id=rid, customer_id=customer, ttl_seconds=ttl, split=split
            ),
            lambda: self.model.reserve(rid, customer, ttl * 1000, split, self.as_model(lines)),
        )
        if got is None:
            return False
        created, r = want
        assert got.created is created
        if created:
            r.ex = r.ex0 = self.ex_of(got, ttl * 1000)
        self.same_reservation(got.data, r, first=not created)
        return True

    def do_commit(self, rid, oid) -> bool:
        self.begin()
        got, want = self.both(
            lambda: self.engine.commit(rid, oid), lambda: self.model.commit(rid, oid)
        )
        if got is None:
            return False
        assert got.created is want[0]
        self.same_order(got.data, want[1])
        return True

    def do_fulfill(self, oid, lines, ref) -> None:
        self.begin()
        got, want = self.both(
            lambda: self.engine.fulfill(oid, lines, fulfillment_id=ref),
            lambda: self.model.fulfill(oid, None if lines is None else self.as_model(lines), ref),
        )
        if got is not None:
            assert got.created is want[0]
            self.same_order(got.data, want[1])

    def do_cancel(self, oid, lines) -> None:
        self.begin()
        got, want = self.both(
            lambda: self.engine.cancel(oid, lines),
            lambda: self.model.cancel(oid, None if lines is None else self.as_model(lines)),
        )
        if got is not None:
            self.same_order(got.data, want[1])

    def do_return(self, oid, lines, restock, ref) -> None:
        self.begin()
        got, want = self.both(
            lambda: self.engine.return_items(oid, lines, restock=restock, return_id=ref),
            lambda: self.model.return_items(oid, self.as_model(lines), restock, ref),
        )
        if got is not None:
            assert got.created is want[0]
            self.same_order(got.data, want[1])

    # -- reservations ---------------------------------------------------------------------

    def ttl(self, data) -> int:
        return 1 if self.real_clock else 600

    @rule(data=st.data(), customer=st.sampled_from(CUSTOMERS), split=st.booleans())
    def reserve(self, data, customer, split):
        self.maybe_wait(data)
        lines = self.triples(data)
        rid = self.pick(data, "r", list(self.model.reservations), new=17)
        self.do_reserve(rid, lines, customer, self.ttl(data), split)

    @rule(data=st.data(), customer=st.sampled_from(CUSTOMERS), restock=st.booleans())
    def checkout(self, data, customer, restock):
        """A whole purchase: reserve; perhaps the hold expires and a rival buys meanwhile;
        commit; then perhaps ship some, cancel or take some back."""
        self.maybe_wait(data)
        rid, oid = self.fresh("r"), self.fresh("o")
        lines = self.triples(data)
        if not self.do_reserve(rid, lines, customer, self.ttl(data), True):
            return
        if data.draw(st.booleans()):
            self.time_passes(rid, sweep=data.draw(st.booleans()))
            if data.draw(st.booleans()):
                # Another buyer, or the same customer again (the per-customer limit then counts).
                rival = [dict(ln, quantity=data.draw(quantities)) for ln in lines]
                who = data.draw(st.sampled_from([customer, *CUSTOMERS]))
                self.do_reserve(self.fresh("r"), rival, who, 600, True)
        if not self.do_commit(rid, oid):
            return
        if data.draw(st.booleans()):
            self.do_fulfill(oid, self.order_triples(data, oid), self.ref(data, "ful"))
        then = data.draw(st.sampled_from(["nothing", "cancel", "return", "both"]))
        if then in ("cancel", "both"):
            self.do_cancel(oid, self.order_triples(data, oid))
        if then in ("return", "both"):
            lines = self.order_triples(data, oid, returnable_units)
            self.do_return(oid, lines, restock, self.ref(data, "ret"))

    @precondition(lambda self: self.model.reservations)
    @rule(data=st.data())
    def replay_reserve(self, data):
        r = data.draw(st.sampled_from(sorted(self.model.reservations.values(),
                                             key=lambda r: r.rid)))  # fmt: skip
        customer, ttl_ms, split, lines = r.body
        items = [{"sku": s, "location": loc or None, "quantity": q} for s, loc, q in lines]
        self.begin()
        got, want = self.both(
            lambda: self.engine.reserve(
                items,
                reservation_id=r.rid,
                customer_id=customer,
                ttl_seconds=ttl_ms // 1000,
                split=split,
            ),  # fmt: skip
            lambda: self.model.reserve(r.rid, customer, ttl_ms, split, list(lines)),
        )
        assert got is not None and not got.created
        self.same_reservation(got.data, want[1], first=True)

    @precondition(lambda self: self.model.reservations)
    @rule(data=st.data())
    def release(self, data):
        rid = self.pick(data, "r", list(self.model.reservations), self.rids("active", "expired"))
        self.begin()
        got, want = self.both(lambda: self.engine.release(rid), lambda: self.model.release(rid))
        if got is not None:
            assert got.created is want[0]
            self.same_reservation(got.data, want[1])

    @precondition(lambda self: self.model.reservations)
    @rule(data=st.data())
    def extend(self, data):
        ttl = self.ttl(data)
        rid = self.pick(data, "r", list(self.model.reservations), self.rids("active"))
        self.begin()
        got, want = self.both(lambda: self.engine.extend(rid, ttl), lambda: self.model.extend(rid))
        if got is not None:
            want.ex = self.ex_of(got, ttl * 1000)
            want.extended = True
            self.same_reservation(got.data, want)

    @precondition(lambda self: self.model.reservations)
    @rule(data=st.data())
    def commit(self, data):
        self.maybe_wait(data)
        rid = self.pick(data, "r", list(self.model.reservations), self.rids("active", "expired"))
        oid = self.pick(data, "o", list(self.model.orders), new=16)
        self.do_commit(rid, oid)

    def time_passes(self, rid: str, sweep: bool = False) -> None:
        """The hold's TTL runs out now (and perhaps the sweeper comes by at once)."""
        self.begin()
        r = self.model.reservations[rid]
        r.ex = self.run(backdate(self.engine, rid))
        if not r.extended:
            r.ex0 = r.ex  # as if it had been made that much earlier: its first answer too
        self.begin()
        if sweep:
            self.sweep_now()

    @precondition(lambda self: any(r.status == "active" for r in self.model.reservations.values()))
    @rule(data=st.data())
    def time_passes_for_a_hold(self, data):
        rid = data.draw(st.sampled_from(sorted(self.rids("active"))))
        self.time_passes(rid, sweep=data.draw(st.booleans()))

    def maybe_wait(self, data) -> None:
        """In a real-clock example, once, sleep until a live hold's TTL has really passed."""
        if not self.real_clock or self.waited or not data.draw(st.booleans()):
            return
        now = self.now()
        soon = [ex for ex in self.live_expiries() if now < ex <= now + 1_100]
        if soon:
            self.waited = True
            time.sleep((min(soon) - now + 5) / 1000)

    @rule()
    def sweep(self):
        self.sweep_now()

    def sweep_now(self) -> None:
        self.begin()
        n = self.run(self.engine.sweep(self.engine.partitions[0]))
        assert n == self.model.reaped(), "sweep expires exactly the holds past their TTL"

    # -- orders ---------------------------------------------------------------------------

    def ref(self, data, kind):
        """None, a new id, or one used before (same or different body)."""
        choice = data.draw(st.sampled_from(["none", "new", "old"]))
        if choice == "none" or (choice == "old" and not self.refs[kind]):
            return None
        if choice == "new":
            self.refs[kind].append(self.fresh(kind))
            return self.refs[kind][-1]
        return data.draw(st.sampled_from(self.refs[kind]))

    @precondition(lambda self: self.model.orders)
    @rule(data=st.data())
    def fulfill(self, data):
        oid = self.pick(data, "o", list(self.model.orders), self.oids(open_units))
        self.do_fulfill(oid, self.order_triples(data, oid), self.ref(data, "ful"))

    @precondition(lambda self: self.model.orders)
    @rule(data=st.data())
    def cancel(self, data):
        oid = self.pick(data, "o", list(self.model.orders), self.oids(open_units))
        self.do_cancel(oid, self.order_triples(data, oid))

    @precondition(lambda self: self.model.orders)
    @rule(data=st.data(), restock=st.booleans())
    def return_items(self, data, restock):
        oid = self.pick(data, "o", list(self.model.orders), self.oids(returnable_units))
        lines = self.order_triples(data, oid, returnable_units)
        self.do_return(oid, lines, restock, self.ref(data, "ret"))

    # -- stock ----------------------------------------------------------------------------

    @rule(data=st.data(), on_hand=st.integers(0, 9), safety=st.sampled_from([None, None, 0, 1]))
    def set_on_hand(self, data, on_hand, safety):
        sku = data.draw(st.sampled_from(SKUS))
        loc = data.draw(st.sampled_from(LOCS[sku]))
        ref = self.ref(data, "adj")
        self.begin()
        got, want = self.both(
            lambda: self.engine.set_on_hand(
                sku, loc, on_hand, safety_stock=safety, adjustment_id=ref
            ),  # fmt: skip
            lambda: self.model.set_on_hand(sku, loc, on_hand, safety, ref),
        )
        if got is not None:
            assert got.created is want[0]
            assert {k: v for k, v in got.data.items() if k != "location"} == want[1]

    @rule(data=st.data(), delta=st.sampled_from([-3, -2, -1, 1, 2, 4]),
          reason=st.sampled_from(["received", "damaged"]))  # fmt: skip
    def adjust(self, data, delta, reason):
        sku = data.draw(st.sampled_from([*SKUS, *SKUS, "Z"]))
        loc = data.draw(st.sampled_from(LOCS.get(sku, ["w1"])))
        ref = self.ref(data, "adj")
        self.begin()
        got, want = self.both(
            lambda: self.engine.adjust(sku, loc, delta, reason, adjustment_id=ref),
            lambda: self.model.adjust(sku, loc, delta, reason, ref),
        )
        if got is not None:
            assert got.created is want[0]
            assert {k: v for k, v in got.data.items() if k != "location"} == want[1]

    @rule(backorder=st.sampled_from(["deny", "allow", "notify"]),
          limit=st.sampled_from([None, 0, 2, 5]))  # fmt: skip
    def set_policy(self, backorder, limit):
        self.begin()
        self.run(self.engine.set_item("B", {"backorder": backorder, "backorder_limit": limit},
                                      merge=True))  # fmt: skip
        self.model.set_item("B", backorder=backorder, backorder_limit=limit)

    # -- comparisons ----------------------------------------------------------------------

    def same_reservation(self, data, r: Reservation, first: bool = False) -> None:
        """The engine's reservation is the model's as it is now (or as it was first answered)."""
        status, ex = ("active", r.ex0) if first else (r.status, r.ex)
        assert data["status"] == status, (data, r)
        assert data["customer_id"] == r.customer
        got = sorted((i["sku"], i["location"], i["quantity"], i["backordered"])
                     for i in data["items"])  # fmt: skip
        assert got == sorted(tuple(ln) for ln in r.lines), (data, r)
        assert iso_ms(data["expires_at"]) == ex, (data, r)

    def same_order(self, data, view) -> None:
        got = [(i["sku"], i["location"], i["quantity"], i["fulfilled"], i["cancelled"],
                i["returned"], i["open"]) for i in data["items"]]  # fmt: skip
        assert (data["order_id"], data["reservation_id"], data["status"], got) == (
            view["order_id"],
            view["reservation_id"],
            view["status"],
            view["items"],
        ), (data, view)

    @invariant()
    def everything_agrees(self):
        e, m = self.engine, self.model
        for sku in SKUS:
            data = self.run(e.get_stock(sku)).data
            got = {lv["location"]: {k: v for k, v in lv.items() if k != "location"}
                   for lv in data["locations"]}  # fmt: skip
            want = {loc: lv.as_dict() for (s, loc), lv in m.levels.items() if s == sku}
            assert got == want, sku
        for rid, r in m.reservations.items():
            self.same_reservation(self.run(e.get_reservation(rid)).data, r)
        for oid, o in m.orders.items():
            self.same_order(self.run(e.get_order(oid)).data, o.view())
        # The per-customer counts the scripts keep are the units held and open.
        for cust in CUSTOMERS[1:]:
            for sku in SKUS:
                n = self.run(self.client.get(e.partitions[0].customer(cust, sku)))
                assert int(n or 0) == m.held(cust, sku), (cust, sku)
        m.reaped()
        # One event per change, and the stream's deltas rebuild every level.
        entries = self.run(self.client.xrange(e.partitions[0].events, self.stream_pos))
        if self.stream_pos != "-":
            entries = entries[1:]
        if entries:
            self.stream_pos = entries[-1][0]
        self.stream += [json.loads(f[b"e"]) for _, f in entries]
        written = Counter(ev["type"] for ev in self.stream)
        assert written == +m.events, (written, m.events)
        rebuilt = replayed_levels(self.stream)
        for (sku, loc), lv in m.levels.items():
            want = [lv.on_hand, lv.reserved, lv.committed, lv.safety]
            assert rebuilt.get((sku, loc), [0, 0, 0, 0]) == want, (sku, loc)
        self.no_expiry_since(self.t0)

    def teardown(self):
        async def drop():
            async for key in self.client.scan_iter(match=f"{self.settings.key_prefix}:*"):
                await self.client.delete(key)

        self.run(drop())


@pytest.mark.parametrize(
    "backend", [pytest.param("redis", marks=pytest.mark.redis), pytest.param("fakeredis")]
)
def test_engine_matches_the_reference_model(backend):
    if backend == "redis":
        need_redis()
    loop = asyncio.new_event_loop()
    client = aredis.Redis.from_url(REDIS_URL) if backend == "redis" else fakeredis.FakeAsyncRedis()
    machine = type("Machine", (EngineVsModel,), {"loop": loop, "client": client})
    try:
        run_state_machine_as_test(
            machine,
            settings=settings(
                max_examples=EXAMPLES,
                stateful_step_count=50,
                deadline=None,
                derandomize=True,
                database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
            ),
        )
    finally:
        loop.run_until_complete(client.aclose())
        loop.close()
