"""The reservation engine: an async Python API over the Lua scripts (no HTTP here).

Every method is one atomic script call in one partition. Results come back as
the script's JSON bytes (:class:`Reply`), so the HTTP layer can hand them on
without decoding and encoding again.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import orjson

from flashstock.durability import READ_ONLY, Durability
from flashstock.errors import (
    CrossPartition,
    IdempotencyConflict,
    InsufficientStock,
    InvalidRequest,
    RefusalCode,
    refusal,
)
from flashstock.keys import Keys, partition_of
from flashstock.keys import claim as keys_claim
from flashstock.scripts import Scripts
from flashstock.settings import Settings
from flashstock.soldout import SoldOutCache
from flashstock.validation import id_problem, is_date, quantity_problem

BACKORDER_POLICIES = ("deny", "allow", "notify")
# How long an id's claim outlives its first use: the script that writes the id's record
# runs within milliseconds of it; afterwards the record itself is what other partitions see.
CLAIM_MS = 30_000
# Scripts after which units may be available again: the sold-out memory is cleared.
GIVES_BACK = frozenset(("release", "cancel", "returns", "set_level", "adjust", "set_item", "sweep"))


@dataclass(frozen=True, slots=True)
class Line:
    """One requested line: a sku, a quantity and, optionally, the location to take it from."""

    sku: str
    quantity: int
    location: str | None = None


@dataclass(frozen=True)
class Reply:
    """A script's answer: ``created`` is False for a replay that changed nothing."""

    created: bool
    raw: bytes

    @cached_property
    def data(self) -> dict[str, Any]:
        return orjson.loads(self.raw)  # type: ignore[no-any-return]


LineLike = Line | tuple[str, int, str | None] | Mapping[str, Any]


_ids: list[str] = []
# A forked child must never hand out ids its parent also holds (os.getpid() per call would
# cost a system call on every reserve).
os.register_at_fork(after_in_child=_ids.clear)


def new_reservation_id() -> str:
    """32 random hex digits, like ``uuid4().hex``: drawn 256 at a time from the OS (one call
    instead of one per reserve), and never shared with a forked process."""
    if not _ids:
        raw = os.urandom(16 * 256).hex()
        _ids.extend(raw[i : i + 32] for i in range(0, len(raw), 32))
    return _ids.pop()


def _hash(*parts: Any) -> str:
    return hashlib.blake2b(orjson.dumps(parts), digest_size=12).hexdigest()


def _bad_line(i: int, what: str, problem: str) -> InvalidRequest:
    """A line's field refused, named as the request validator names it (``items.1.sku``)."""
    return InvalidRequest(
        f"items.{i}.{what}: {problem}", field=what, loc=["body", "items", str(i), what]
    )


def _check_id(value: object, what: str) -> None:
    if (problem := id_problem(value, what)) is not None:
        raise InvalidRequest(problem, field=what)


class Engine:
    """Reserve, commit, fulfill, cancel and return stock held in Redis.

    Args:
        redis: a ``redis.asyncio.Redis`` client (``decode_responses=False``).
        settings: prefix, partitions, TTL and limits.
    """

    def __init__(
        self, redis: Any, settings: Settings | None = None, scripts: Scripts | None = None
    ):
        self.redis = redis
        self.settings = settings or Settings()
        self.scripts = scripts or Scripts()
        s = self.settings
        self._parts = [Keys(s.key_prefix, p) for p in range(s.partitions)]
        self._retention = s.retention_seconds * 1000
        # Strict durability: mutating scripts answer once on disk (set by the API, see app.py).
        self.durable: Durability | None = None
        # Abuse limits passed to every reserve (reserve.lua ARGV[8..13]); see docs/security.md.
        self._limits = (
            s.rate_limit_customer,
            s.rate_limit_key,
            s.rate_limit_window_seconds * 1000,
            s.max_holds_per_customer,
            s.max_hold_seconds * 1000,
            s.max_cart_share,
        )
        # Sold-out answers from memory (soldout.py): off while any global abuse limit is on.
        self._soldout = SoldOutCache(s.soldout_cache_ms)
        self._cacheable = self._soldout.enabled and not (
            s.rate_limit_customer or s.rate_limit_key or s.max_holds_per_customer
            or s.max_hold_seconds or s.max_cart_share
        )  # fmt: skip

    # -- plumbing ---------------------------------------------------------------------------

    def keys_for(self, sku: str) -> Keys:
        return self._parts[partition_of(sku, len(self._parts))]

    @property
    def partitions(self) -> list[Keys]:
        return list(self._parts)

    async def _run(self, name: str, keys: Keys, *args: Any) -> Reply:
        if self.durable is not None and name not in READ_ONLY:  # strict mode (durability.py)
            code, payload = await self.durable.call(
                self.redis, self.scripts, name, [keys.base], [self._retention, *args]
            )
        else:
            code, payload = await self.scripts.call(
                self.redis, name, [keys.base], [self._retention, *args]
            )
        if code < 0:
            raise refusal(code, orjson.loads(payload))
        if name in GIVES_BACK:
            self._soldout.forget()
        return Reply(code == 0, payload)

    async def _find(self, key_of: str, ident: str) -> Keys | None:
        """The partition holding a reservation or order, None if none does."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for k in self._parts:
                pipe.exists(getattr(k, key_of)(ident))
            found = await pipe.execute()
        return next((k for k, f in zip(self._parts, found, strict=True) if f), None)

    async def _unique(self, keys: Keys, key: Callable[[Keys], str], **ident: str) -> None:
        """Refuse an id already used in another partition.

        Each script checks its ids atomically in its own partition; with several
        partitions an id must also be unique store-wide. Two looks, in one round trip:
        a claim (``SET NX``) naming the partition that used the id first, which settles
        first uses racing in two partitions, and whether the id's record exists in any
        other partition, which covers uses after the claim has expired.
        """
        if len(self._parts) == 1:
            return
        ((name, value),) = ident.items()
        claim = keys_claim(self.settings.key_prefix, name, value)
        mine = keys.base
        others = [k for k in self._parts if k is not keys]
        async with self.redis.pipeline(transaction=False) as pipe:
            # Never changed once set, so the GET reads whoever won, us or the other.
            pipe.set(claim, mine, nx=True, px=CLAIM_MS)
            pipe.get(claim)
            for k in others:
                pipe.exists(key(k))
            _, holder, *used = await pipe.execute()
        if isinstance(holder, bytes):
            holder = holder.decode()
        if holder not in (mine, None) or any(used):
            raise IdempotencyConflict(
                "this id was already used with a different request body", **ident
            )

    async def _locate(self, key_of: str, ident: str) -> Keys:
        """The partition to ask about a reservation or order (only looked up when there are several)."""
        if len(self._parts) == 1:
            return self._parts[0]
        return await self._find(key_of, ident) or self._parts[0]

    def _lines(self, items: Iterable[LineLike], *, need_one: bool) -> list[Any]:
        s = self.settings
        args: list[Any] = []
        n = 0
        for i, raw in enumerate(items):
            try:
                line = (
                    raw
                    if isinstance(raw, Line)
                    else Line(*raw)
                    if isinstance(raw, tuple)
                    else Line(**raw)
                )
            except TypeError as exc:
                raise InvalidRequest(
                    "a line has exactly: sku, quantity and, optionally, location"
                ) from exc

            if (p := id_problem(line.sku, "sku")) is not None:
                raise _bad_line(i, "sku", p)
            if line.location is not None and (p := id_problem(line.location, "location")):
                raise _bad_line(i, "location", p)
            if p := quantity_problem(line.quantity, high=s.max_quantity):
                raise _bad_line(i, "quantity", p)
            args += [line.sku, line.location or "", line.quantity]
            n += 1
        if need_one and n == 0:
            raise InvalidRequest("at least one line is required")
        if n > s.max_lines:
            raise InvalidRequest(f"at most {s.max_lines} lines per request (got {n})")
        return args

    def _some_lines(self, items: Sequence[LineLike] | None) -> list[Any]:
        """Lines naming what to fulfil or cancel; None (not an empty list) means every open one."""
        if items is not None and len(items) == 0:
            raise InvalidRequest(
                "items must name at least one line; leave it out for every open line"
            )
        return self._lines(items or (), need_one=False)

    def _ttl_ms(self, ttl_seconds: int | None) -> int:
        ttl = self.settings.default_ttl_seconds if ttl_seconds is None else ttl_seconds
        if p := quantity_problem(ttl, "ttl_seconds", high=self.settings.max_ttl_seconds):
            raise InvalidRequest(p, field="ttl_seconds")
        return ttl * 1000

    # -- reservations -----------------------------------------------------------------------

    async def reserve(
        self,
        items: Sequence[LineLike],
        *,
        reservation_id: str | None = None,
        customer_id: str | None = None,
        ttl_seconds: int | None = None,
        split: bool = True,
        key_id: str | None = None,
    ) -> Reply:
        """Hold every line for ``ttl_seconds``, all or nothing.

        ``key_id`` is the API key making the request, for its rate limit.

        Raises:
            InsufficientStock, UnknownSku, UnknownLocation, LimitExceeded,
            IdempotencyConflict, InvalidRequest, RateLimited, TooManyHolds,
            HoldLifetimeExceeded, CartShareExceeded.
        """
        args = self._lines(items, need_one=True)
        cart = None
        if reservation_id is None:
            cart = SoldOutCache.lines(args, split) if self._cacheable else None
        else:
            _check_id(reservation_id, "reservation_id")
        if customer_id is not None:
            _check_id(customer_id, "customer_id")
        ttl = self._ttl_ms(ttl_seconds)
        skus = args[0::3]
        keys = self.keys_for(skus[0])
        if len(self._parts) > 1:
            if any(self.keys_for(s) is not keys for s in skus):
                raise CrossPartition("the skus of one reservation must share a partition")
        if cart is not None and (short := self._soldout.refusal(cart)) is not None:
            raise refusal(RefusalCode.INSUFFICIENT_STOCK, {"lines": short})
        if reservation_id is None:
            reservation_id = new_reservation_id()
        rid = reservation_id
        await self._unique(keys, lambda k: k.reservation(rid), reservation_id=rid)
        body = _hash(customer_id, ttl, split, args)
        sent = time.monotonic()
        try:
            return await self._run(
                "reserve",
                keys,
                reservation_id,
                customer_id or "",
                ttl,
                body,
                "1" if split else "0",
                key_id or "",
                *self._limits,
                *args,
            )
        except InsufficientStock as exc:
            cache_ms = exc.details.pop("cache_ms", None)  # for this process, not the caller
            if cart is not None and cache_ms is not None:
                self._soldout.learn(cart, exc.details.get("lines", []), cache_ms, sent)
            raise

    async def get_reservation(self, reservation_id: str) -> Reply:
        _check_id(reservation_id, "reservation_id")
        keys = await self._locate("reservation", reservation_id)
        return await self._run("get_reservation", keys, reservation_id)

    async def extend(self, reservation_id: str, ttl_seconds: int) -> Reply:
        _check_id(reservation_id, "reservation_id")
        ttl = self._ttl_ms(ttl_seconds)
        keys = await self._locate("reservation", reservation_id)
        return await self._run("extend", keys, reservation_id, ttl, self._limits[4])

    async def release(self, reservation_id: str) -> Reply:
        _check_id(reservation_id, "reservation_id")
        keys = await self._locate("reservation", reservation_id)
        return await self._run("release", keys, reservation_id)

    async def commit(self, reservation_id: str, order_id: str) -> Reply:
        """Turn a reservation into order ``order_id`` (re-reserving an expired hold if stock allows)."""
        _check_id(reservation_id, "reservation_id")
        _check_id(order_id, "order_id")
        keys = await self._locate("reservation", reservation_id)
        await self._unique(keys, lambda k: k.order(order_id), order_id=order_id)
        return await self._run("commit", keys, reservation_id, order_id)

    # -- orders -----------------------------------------------------------------------------

    async def get_order(self, order_id: str) -> Reply:
        _check_id(order_id, "order_id")
        keys = await self._locate("order", order_id)
        return await self._run("get_order", keys, order_id)

    async def fulfill(
        self,
        order_id: str,
        items: Sequence[LineLike] | None = None,
        *,
        fulfillment_id: str | None = None,
    ) -> Reply:
        """Ship ``items`` (or every open unit) of an order: on_hand and committed fall together."""
        _check_id(order_id, "order_id")
        if fulfillment_id is not None:
            _check_id(fulfillment_id, "fulfillment_id")
        args = self._some_lines(items)
        keys = await self._locate("order", order_id)
        if fulfillment_id is not None:
            fid = fulfillment_id
            await self._unique(keys, lambda k: k.idempotency("ful", fid), fulfillment_id=fid)
        return await self._run(
            "fulfill", keys, order_id, fulfillment_id or "", _hash(items is None, args), *args
        )

    async def cancel(self, order_id: str, items: Sequence[LineLike] | None = None) -> Reply:
        """Give back ``items`` (or every open unit) of an order; shipped units are untouched."""
        _check_id(order_id, "order_id")
        args = self._some_lines(items)
        keys = await self._locate("order", order_id)
        return await self._run("cancel", keys, order_id, *args)

    async def return_items(
        self,
        order_id: str,
        items: Sequence[LineLike],
        *,
        restock: bool,
        return_id: str | None = None,
    ) -> Reply:
        """Take back shipped units; with ``restock`` they return to on_hand at their location."""
        _check_id(order_id, "order_id")
        if return_id is not None:
            _check_id(return_id, "return_id")
        args = self._lines(items, need_one=True)
        keys = await self._locate("order", order_id)
        if return_id is not None:
            ret = return_id
            await self._unique(keys, lambda k: k.idempotency("ret", ret), return_id=ret)
        return await self._run(
            "returns",
            keys,
            order_id,
            return_id or "",
            _hash(restock, args),
            "1" if restock else "0",
            *args,
        )

    # -- stock and items --------------------------------------------------------------------

    async def get_stock(self, sku: str) -> Reply:
        _check_id(sku, "sku")
        return await self._run("get_stock", self.keys_for(sku), sku)

    async def set_on_hand(
        self,
        sku: str,
        location: str,
        on_hand: int,
        *,
        safety_stock: int | None = None,
        adjustment_id: str | None = None,
        by: str | None = None,
    ) -> Reply:
        """Record a stock count; reserved and committed units are never touched.

        ``by`` (an API key id) is recorded in the event, as for every ops change.
        """
        _check_id(sku, "sku")
        _check_id(location, "location")
        high = self.settings.max_quantity
        if p := quantity_problem(on_hand, "on_hand", low=0, high=high):
            raise InvalidRequest(p, field="on_hand")
        if safety_stock is not None and (
            p := quantity_problem(safety_stock, "safety_stock", low=0, high=high)
        ):
            raise InvalidRequest(p, field="safety_stock")
        if adjustment_id is not None:
            _check_id(adjustment_id, "adjustment_id")
        safety = "" if safety_stock is None else safety_stock
        keys = self.keys_for(sku)
        if adjustment_id is not None:
            adj = adjustment_id
            await self._unique(keys, lambda k: k.idempotency("adj", adj), adjustment_id=adj)
        return await self._run(
            "set_level",
            keys,
            sku,
            location,
            on_hand,
            safety,
            adjustment_id or "",
            _hash("count", on_hand, safety_stock),
            by or "",
        )

    async def adjust(
        self,
        sku: str,
        location: str,
        delta: int,
        reason: str,
        *,
        adjustment_id: str | None = None,
        by: str | None = None,
    ) -> Reply:
        """Add ``delta`` units to on_hand (negative removes); refused below zero."""
        _check_id(sku, "sku")
        _check_id(location, "location")
        _check_id(reason, "reason")
        high = self.settings.max_quantity
        if isinstance(delta, bool) or not isinstance(delta, int) or delta == 0 or abs(delta) > high:
            raise InvalidRequest(f"delta must be a non-zero integer within ±{high}", field="delta")
        keys = self.keys_for(sku)
        if adjustment_id is not None:
            _check_id(adjustment_id, "adjustment_id")
            adj = adjustment_id
            await self._unique(keys, lambda k: k.idempotency("adj", adj), adjustment_id=adj)
        return await self._run(
            "adjust",
            keys,
            sku,
            location,
            delta,
            reason,
            adjustment_id or "",
            _hash("adjust", delta, reason),
            by or "",
        )

    async def set_item(
        self,
        sku: str,
        policy: Mapping[str, Any],
        *,
        locations: Sequence[str] | None = None,
        merge: bool = False,
        by: str | None = None,
    ) -> Reply:
        """Set an item's policy (``merge``: only the fields given) and its locations' priority."""
        _check_id(sku, "sku")
        check_policy(policy, self.settings.max_quantity)
        locs = ""
        if locations is not None:
            for loc in locations:
                _check_id(loc, "location")
            if len(set(locations)) != len(locations):
                raise InvalidRequest("locations must not repeat", field="locations")
            locs = orjson.dumps(list(locations)).decode()
        return await self._run(
            "set_item",
            self.keys_for(sku),
            sku,
            "merge" if merge else "replace",
            orjson.dumps(dict(policy)).decode(),
            locs,
            by or "",
        )

    async def sweep(self, keys: Keys, limit: int = 500) -> int:
        """Expire up to ``limit`` holds of one partition whose TTL has passed."""
        return int((await self._run("sweep", keys, limit)).raw)

    # -- rebuild from the ledger (flashstock/rebuild.py builds the batches) -------------------

    async def rebuild_stock(self, keys: Keys, items: bytes, levels: bytes) -> int:
        """Write items and levels (JSON batches) into one partition, replacing what is there."""
        return int((await self._run("rebuild_stock", keys, items, levels)).raw)

    async def rebuild_orders(self, keys: Keys, orders: bytes) -> int:
        """Write orders (a JSON batch) into one partition, with their customers' counts."""
        return int((await self._run("rebuild_orders", keys, orders)).raw)

    async def rebuild_holds(self, keys: Keys, reservations: bytes) -> dict[str, int]:
        """Write reservations (a JSON batch) with their holds; past-TTL ones are expired at once."""
        return (await self._run("rebuild_holds", keys, reservations)).data

    async def rebuild_ids(self, keys: Keys, records: bytes) -> int:
        """Write idempotency records (a JSON batch) still inside their retention window."""
        return int((await self._run("rebuild_ids", keys, records)).raw)


POLICY_INTS = ("backorder_limit", "ships_in_days", "low_stock_threshold", "per_customer_limit")
# Abuse limits an item may set for a drop (docs/security.md): field -> (lowest, highest).
POLICY_LIMITS = {
    "rate_limit_customer": (1, 1_000_000),
    "max_holds_per_customer": (1, 10_000),
    "max_hold_seconds": (1, 31_536_000),
    "max_cart_share": (1, 100),
}


def check_policy(policy: Mapping[str, Any], high: int) -> None:
    """Refuse unknown fields and values of the wrong kind in an item policy."""
    for field, value in policy.items():
        if value is None:
            continue
        if field == "backorder":
            if value not in BACKORDER_POLICIES:
                raise InvalidRequest(
                    f"backorder must be one of {', '.join(BACKORDER_POLICIES)}", field=field
                )
        elif field in POLICY_INTS:
            low = 1 if field == "per_customer_limit" else 0
            if p := quantity_problem(value, field, low=low, high=high):
                raise InvalidRequest(p, field=field)
        elif field in POLICY_LIMITS:
            low, top = POLICY_LIMITS[field]
            if p := quantity_problem(value, field, low=low, high=top):
                raise InvalidRequest(p, field=field)
        elif field == "restock_date":
            if not isinstance(value, str) or not is_date(value):
                raise InvalidRequest("restock_date must be a date as YYYY-MM-DD", field=field)
        else:
            raise InvalidRequest(f"unknown policy field {field!r}", field=field)
