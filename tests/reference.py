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


def line(sku: str, quantity: int, location: str | None = None) -> dict[str, Any]:
    """One reservation line as the engine takes it."""
    return {"sku": sku, "quantity": quantity, "location": location}


async def stock(engine: Engine, sku: str, **per_location: int) -> None:
    """Set ``on_hand`` of ``sku`` at each location given as a keyword."""
    for loc, n in per_location.items():
        await engine.set_on_hand(sku, loc, n)


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


# -- the reference model ----------------------------------------------------------------------


@dataclass
class Item:
    backorder: str = "deny"
    backorder_limit: int | None = None
    per_customer_limit: int | None = None
    low_stock_threshold: int | None = None
    locations: list[str] = field(default_factory=list)  # configured priority order

    def budget(self, short: int) -> float:
        """Units that may still go on backorder, the item's locations being ``short`` together
        (SPEC §1: the policy is shared by all the item's locations)."""
        if self.backorder == "deny":
            return 0
        return float("inf") if self.backorder_limit is None else self.backorder_limit - short


def bo_of(left: int, q: int) -> int:
    """Units of ``q`` that ``left`` available cannot cover."""
    return q - max(0, min(q, left))


@dataclass
class Level:
    on_hand: int = 0
    reserved: int = 0
    committed: int = 0
    safety: int = 0

    @property
    def available(self) -> int:
        return self.on_hand - self.reserved - self.committed - self.safety

    def as_dict(self) -> dict[str, int]:
        return {"on_hand": self.on_hand, "reserved": self.reserved, "committed": self.committed,
                "safety_stock": self.safety, "available": self.available}  # fmt: skip


@dataclass
class Reservation:
    rid: str
    customer: str | None
    ex: int
    lines: list[list[Any]]  # [sku, location, quantity, backordered]
    body: tuple[Any, ...]
    status: str = "active"
    ex0: int = 0  # the first expires_at: a replay answers the first result
    extended: bool = False


@dataclass
class Order:
    oid: str
    rid: str
    customer: str | None
    lines: list[list[Any]]  # [sku, location, quantity, fulfilled, cancelled, returned]

    @property
    def status(self) -> str:
        open_ = sum(ln[2] - ln[3] - ln[4] for ln in self.lines)
        done = sum(ln[3] for ln in self.lines)
        if open_ > 0:
            return "partially_fulfilled" if done else "open"
        return "fulfilled" if done else "cancelled"

    def items(self) -> list[tuple[Any, ...]]:
        return [(s, loc, q, f, c, r, q - f - c) for s, loc, q, f, c, r in self.lines]

    def view(self) -> dict[str, Any]:
        """The order as the engine answers it."""
        return {"order_id": self.oid, "reservation_id": self.rid, "status": self.status,
                "items": self.items()}  # fmt: skip


Triple = tuple[str, str, int]  # sku, location ('' = any), quantity


class Model:
    """Flashstock's contract over plain dictionaries; every method raises like the engine.

    Methods check everything first and change state only when they succeed.
    ``events`` counts the stream entries each change would write.
    """

    def __init__(self) -> None:
        self.items: dict[str, Item] = {}
        self.levels: dict[tuple[str, str], Level] = {}
        self.reservations: dict[str, Reservation] = {}
        self.orders: dict[str, Order] = {}
        self.ids: dict[tuple[str, str], tuple[Any, Any, Any]] = {}  # body, scope, first result
        self.events: Counter[str] = Counter()
        self.unreaped: set[str] = set()  # expired by the clock, not yet reaped by a script

    # -- helpers --------------------------------------------------------------------------

    def locations(self, sku: str) -> list[str]:
        return [loc for (s, loc) in self.levels if s == sku]

    def _move(self, sku: str, loc: str, on_hand=0, reserved=0, committed=0, safety=0) -> None:
        lv = self.levels.setdefault((sku, loc), Level())
        before = lv.available
        lv.on_hand += on_hand
        lv.reserved += reserved
        lv.committed += committed
        lv.safety += safety
        thr = self.items[sku].low_stock_threshold
        if thr is not None and lv.available <= thr < before:
            self.events["low_stock"] += 1

    def held(self, customer: str, sku: str) -> int:
        """Units of ``sku`` the customer holds or has open in orders (the per-customer limit)."""
        n = sum(ln[2] for r in self.reservations.values()
                if r.customer == customer and r.status == "active"
                for ln in r.lines if ln[0] == sku)  # fmt: skip
        n += sum(ln[2] - ln[3] - ln[4] for o in self.orders.values() if o.customer == customer
                 for ln in o.lines if ln[0] == sku)  # fmt: skip
        return n

    def expire_due(self, now: int) -> None:
        """The clock reads ``now``: every active hold with expires_at <= now has expired."""
        for r in self.reservations.values():
            if r.status == "active" and r.ex <= now:
                self._expire(r)

    def _expire(self, r: Reservation) -> None:
        for sku, loc, q, _ in r.lines:
            self._move(sku, loc, reserved=-q)
        r.status = "expired"
        self.events["expired"] += 1
        self.unreaped.add(r.rid)

    def reaped(self) -> int:
        """Scripts reaped every expired hold; how many there were."""
        n = len(self.unreaped)
        self.unreaped.clear()
        return n

    def _seen(self, kind: str, ref: str | None, body: Any, scope: Any) -> Any:
        """None for a new id, else the first result (a conflict if the request differs)."""
        if ref is None or (kind, ref) not in self.ids:
            return None
        first_body, first_scope, result = self.ids[kind, ref]
        if (first_body, first_scope) != (body, scope):
            raise E.IdempotencyConflict("conflict")
        return result

    def _remember(self, kind: str, ref: str | None, body: Any, scope: Any, result: Any) -> Any:
        if ref is not None:
            self.ids[kind, ref] = (body, scope, result)
        return result

    # -- items and stock ------------------------------------------------------------------

    def set_item(self, sku: str, locations: list[str] | None = None, **policy: Any) -> Item:
        """Merge ``policy`` into the item; a policy event only when something changed."""
        it = self.items.get(sku)
        before = None if it is None else (dict(vars(it)), self.locations(sku))
        it = self.items.setdefault(sku, Item())
        for k, v in policy.items():
            setattr(it, k, v)
        if locations is not None:
            it.locations = list(locations)
            for loc in locations:
                self.levels.setdefault((sku, loc), Level())
        if (dict(vars(it)), self.locations(sku)) != before:
            self.events["policy"] += 1
        return it

    def set_on_hand(self, sku: str, loc: str, on_hand: int, safety: int | None = None,
                    ref: str | None = None) -> tuple[bool, dict[str, int]]:  # fmt: skip
        body, scope = ("count", on_hand, safety), (sku, loc)
        if (first := self._seen("adj", ref, body, scope)) is not None:
            return False, first
        lv = self.levels.get((sku, loc))
        new_safety = safety if safety is not None else (lv.safety if lv else 0)
        if lv is None or lv.on_hand != on_hand or lv.safety != new_safety:
            self.items.setdefault(sku, Item())
            old = lv or Level()
            self._move(sku, loc, on_hand=on_hand - old.on_hand, safety=new_safety - old.safety)
            self.events["counted"] += 1
        return True, self._remember("adj", ref, body, scope, self.levels[sku, loc].as_dict())

    def adjust(self, sku: str, loc: str, delta: int, reason: str,
               ref: str | None = None) -> tuple[bool, dict[str, int]]:  # fmt: skip
        body, scope = ("adjust", delta, reason), (sku, loc)
        first = self._seen("adj", ref, body, scope)
        if sku not in self.items:
            raise E.UnknownSku("unknown")
        if first is not None:
            return False, first
        have = self.levels[sku, loc].on_hand if (sku, loc) in self.levels else 0
        if have + delta < 0:
            raise E.NegativeOnHand("below zero")
        self._move(sku, loc, on_hand=delta)
        self.events["adjusted"] += 1
        return True, self._remember("adj", ref, body, scope, self.levels[sku, loc].as_dict())

    # -- reservations ---------------------------------------------------------------------

    def _candidates(self, sku: str) -> list[list[Any]]:
        """[location, left] in allocation order: configured priority, most available, name."""
        it = self.items[sku]
        rank = {loc: i + 1 for i, loc in enumerate(it.locations)}
        unranked = len(it.locations) + 1 if it.locations else 0
        locs = self.locations(sku)
        cand = [[loc, self.levels[sku, loc].available] for loc in locs]
        cand.sort(key=lambda c: (rank.get(c[0], unranked), -c[1], c[0]))
        return cand or [["default", 0]]

    def reserve(self, rid: str, customer: str | None, ttl_ms: int, split: bool,
                lines: list[Triple]) -> tuple[bool, Reservation]:  # fmt: skip
        """Hold ``lines``; the new reservation's expires_at is set by the caller (Redis's clock)."""
        body = (customer, ttl_ms, split, tuple(lines))
        if rid in self.reservations:
            r = self.reservations[rid]
            if r.body != body:
                raise E.IdempotencyConflict("conflict")
            return False, r
        wants: dict[str, dict[str, int]] = {}
        seen_order: list[tuple[str, str]] = []
        for sku, loc, q in lines:
            per = wants.setdefault(sku, {})
            if loc not in per:
                per[loc] = 0
                seen_order.append((sku, loc))
            per[loc] += q
        plan: dict[tuple[str, str], list[Any]] = {}
        short = []
        for sku in wants:
            if sku not in self.items:
                raise E.UnknownSku("unknown")
            it = self.items[sku]
            cand = self._candidates(sku)
            by_loc = {c[0]: c for c in cand}
            total = 0
            budget = it.budget(self._short(sku))

            def take(c: list[Any], q: int, sku: str = sku) -> None:
                nonlocal total, budget
                bo = bo_of(c[1], q)
                budget -= bo
                c[1] -= q
                total += q
                p = plan.setdefault((sku, c[0]), [sku, c[0], 0, 0])
                p[2] += q
                p[3] += bo

            for s, loc in seen_order:
                if s != sku or loc == "":
                    continue
                if loc not in by_loc:
                    raise E.UnknownLocation("unknown")
                c, q = by_loc[loc], wants[sku][loc]
                if bo_of(c[1], q) > budget:
                    short.append((sku, loc))
                else:
                    take(c, q)
            if "" in wants[sku]:
                rest = q = wants[sku][""]
                if split:
                    for c in cand:
                        n = min(rest, max(c[1], 0))
                        if n > 0:
                            take(c, n)
                            rest -= n
                else:
                    for c in cand:
                        if c[1] >= q:
                            take(c, q)
                            rest = 0
                            break
                if rest > 0:
                    for c in cand:
                        if bo_of(c[1], rest) <= budget:
                            take(c, rest)
                            rest = 0
                            break
                if rest > 0:
                    short.append((sku, None))
            if it.per_customer_limit is not None and not short:
                if customer is None:
                    raise E.CustomerRequired("customer required")
                if self.held(customer, sku) + total > it.per_customer_limit:
                    raise E.LimitExceeded("limit")
        if short:
            raise E.InsufficientStock("short", lines=short)
        for sku, loc, q, _ in plan.values():
            self._move(sku, loc, reserved=q)
        r = Reservation(rid, customer, 0, [list(p) for p in plan.values()], body)
        self.reservations[rid] = r
        self.events["reserved"] += 1
        return True, r

    def _reservation(self, rid: str) -> Reservation:
        if rid not in self.reservations:
            raise E.NotFound("no such reservation")
        return self.reservations[rid]

    def release(self, rid: str) -> tuple[bool, Reservation]:
        r = self._reservation(rid)
        if r.status == "committed":
            raise E.NotActive("committed")
        if r.status != "active":
            return False, r
        for sku, loc, q, _ in r.lines:
            self._move(sku, loc, reserved=-q)
        r.status = "released"
        self.events["released"] += 1
        return True, r

    def extend(self, rid: str) -> Reservation:
        """Check an extension is allowed; the new expires_at is set by the caller."""
        r = self._reservation(rid)
        if r.status == "expired":
            raise E.ReservationExpired("expired")
        if r.status != "active":
            raise E.NotActive("not active")
        self.events["extended"] += 1
        return r

    def commit(self, rid: str, oid: str) -> tuple[bool, dict[str, Any]]:
        if oid in self.orders:
            o = self.orders[oid]
            if o.rid != rid:
                raise E.IdempotencyConflict("conflict")
            # The first result: the order as committed, before anything shipped or came back.
            return False, Order(oid, rid, o.customer, [ln[:3] + [0, 0, 0] for ln in o.lines]).view()
        r = self._reservation(rid)
        if r.status == "committed":
            raise E.AlreadyCommitted("committed")
        if r.status == "released":
            raise E.NotActive("released")
        revived = r.status == "expired"
        if revived:
            # Re-reserve against current stock; someone may have bought the units since.
            budgets: dict[str, float] = {}
            short = []
            for sku, loc, q, _ in r.lines:
                if sku not in budgets:
                    budgets[sku] = self.items[sku].budget(self._short(sku))
                bo = bo_of(self._level(sku, loc).available, q)
                if bo > budgets[sku]:
                    short.append((sku, loc))
                budgets[sku] -= bo
            if short:
                raise E.InsufficientStock("short")
            if r.customer is not None:
                per_sku = Counter[str]()
                for ln in r.lines:
                    per_sku[ln[0]] += ln[2]
                for sku, q in per_sku.items():
                    lim = self.items[sku].per_customer_limit
                    if lim is not None and self.held(r.customer, sku) + q > lim:
                        raise E.LimitExceeded("limit")
        for sku, loc, q, _ in r.lines:
            self._move(sku, loc, reserved=0 if revived else -q, committed=q)
        r.status = "committed"
        o = Order(oid, rid, r.customer, [[s, loc, q, 0, 0, 0] for s, loc, q, _ in r.lines])
        self.orders[oid] = o
        self.events["committed"] += 1
        return True, o.view()

    def _level(self, sku: str, loc: str) -> Level:
        return self.levels.get((sku, loc)) or Level()

    def _short(self, sku: str) -> int:
        """Units the sku's locations together are below zero available (on backorder)."""
        return sum(max(0, -self.levels[sku, loc].available) for loc in self.locations(sku))

    # -- orders ---------------------------------------------------------------------------

    def _order(self, oid: str) -> Order:
        if oid not in self.orders:
            raise E.NotFound("no such order")
        return self.orders[oid]

    @staticmethod
    def _pick(o: Order, triples: list[Triple] | None, room, over: type[Exception]):
        """Order line index -> units, for the requested triples (None: all the room there is)."""
        if triples is None:
            return {i: room(ln) for i, ln in enumerate(o.lines) if room(ln) > 0}
        used: dict[int, int] = {}
        for sku, loc, q in triples:
            has_sku = any(ln[0] == sku for ln in o.lines)
            matched = [i for i, ln in enumerate(o.lines)
                       if ln[0] == sku and (loc == "" or ln[1] == loc)]  # fmt: skip
            if has_sku and not matched:
                raise E.LocationMismatch("location")
            if sum(room(o.lines[i]) - used.get(i, 0) for i in matched) < q:
                raise over("too many")
            for i in matched:
                n = min(q, room(o.lines[i]) - used.get(i, 0))
                if n > 0:
                    used[i] = used.get(i, 0) + n
                    q -= n
        return dict(sorted(used.items()))

    def fulfill(self, oid: str, triples: list[Triple] | None,
                ref: str | None = None) -> tuple[bool, dict[str, Any]]:  # fmt: skip
        body = (triples is None, tuple(triples or ()))
        o = self._order(oid)
        first = self._seen("ful", ref, body, oid)
        if first is not None:
            return False, first
        picks = self._pick(o, triples, lambda ln: ln[2] - ln[3] - ln[4], E.ExceedsOpen)
        per_level: Counter[tuple[str, str]] = Counter()
        for i, n in picks.items():
            sku, loc = o.lines[i][0], o.lines[i][1]
            per_level[sku, loc] += n
            if self._level(sku, loc).on_hand - per_level[sku, loc] < 0:
                raise E.NegativeOnHand("below zero")
        for i, n in picks.items():
            ln = o.lines[i]
            self._move(ln[0], ln[1], on_hand=-n, committed=-n)
            ln[3] += n
        if picks:
            self.events["fulfilled"] += 1
        return True, self._remember("ful", ref, body, oid, o.view())

    def cancel(self, oid: str, triples: list[Triple] | None) -> tuple[bool, dict[str, Any]]:
        o = self._order(oid)
        picks = self._pick(o, triples, lambda ln: ln[2] - ln[3] - ln[4], E.ExceedsOpen)
        for i, n in picks.items():
            ln = o.lines[i]
            self._move(ln[0], ln[1], committed=-n)
            ln[4] += n
        if picks:
            self.events["cancelled"] += 1
        return True, o.view()

    def return_items(self, oid: str, triples: list[Triple], restock: bool,
                     ref: str | None = None) -> tuple[bool, dict[str, Any]]:  # fmt: skip
        body = (restock, tuple(triples))
        o = self._order(oid)
        first = self._seen("ret", ref, body, oid)
        if first is not None:
            return False, first
        picks = self._pick(o, triples, lambda ln: ln[3] - ln[5], E.ExceedsReturnable)
        for i, n in picks.items():
            ln = o.lines[i]
            if restock:
                self._move(ln[0], ln[1], on_hand=n)
            ln[5] += n
        self.events["returned"] += 1
        return True, self._remember("ret", ref, body, oid, o.view())
