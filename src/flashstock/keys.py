"""The only place a Redis key is spelled (``lua/lib/keys.lua`` mirrors it; a test checks both).

Every key lives under one *partition* ``{prefix}:{pN}:``. The braces are the
Redis Cluster hash tag, so all keys of a partition share one slot and a Lua
script can touch any of them atomically. A sku belongs to exactly one
partition, and so do its levels, its item policy, the holds on it, the
reservations and orders that contain it, and the partition's event stream.

User-supplied parts (sku, location, ids) are escaped so that ``:``, ``{``,
``}`` and ``%`` in them can neither collide with another key nor move a key to
another slot.

| key (after ``{prefix}:{pN}:``) | type | holds |
|---|---|---|
| ``lv:{sku}:{loc}`` | hash | ``on_hand reserved committed safety`` of one level |
| ``hd:{sku}:{loc}`` | zset | reservation id -> expires_at (ms) of active holds on the level |
| ``it:{sku}`` | hash | item policy (backorder, limits, thresholds) |
| ``locs:{sku}`` | zset | the sku's locations -> allocation priority (lower first) |
| ``rs:{id}`` | hash | one reservation: status, customer, expires_at, lines (JSON), body hash |
| ``or:{id}`` | hash | one order: reservation, status, lines (JSON) |
| ``cu:{customer}:{sku}`` | string | units of the sku the customer holds + has committed |
| ``id:{kind}:{id}`` | hash | first result of an adjustment / fulfillment / return (idempotency) |
| ``ch:{customer}`` | zset | the customer's reservations -> expires_at (ms), for the active-holds cap |
| ``rl:cu:{customer}`` | string | the customer's reservation attempts in the current rate window |
| ``rl:key:{key_id}`` | string | an API key's reservation attempts in the current rate window |
| ``rl:it:{customer}:{sku}`` | string | attempts at a sku with its own rate limit, in the window |
| ``exp`` | zset | reservation id -> expires_at (ms) of every active reservation (the sweeper's index) |
| ``skus`` | set | every sku of the partition |
| ``ev`` | stream | the partition's events, drained to PostgreSQL by the worker |
| ``stats`` | hash | ``events``: how many events the partition's scripts have written |

One key lives outside the partitions: ``{prefix}:claim:{name}:{id}`` (string, no
hash tag, so claims spread over a cluster's slots), the partition that first
used an id, kept for a few seconds so that two first uses racing in two
partitions cannot both create it (only with several partitions; see
``Engine._unique``).
"""

from __future__ import annotations

import zlib

_ESCAPES = str.maketrans({"%": "%25", ":": "%3A", "{": "%7B", "}": "%7D"})


def esc(part: str) -> str:
    """Escape a user-supplied key part (reversible, keeps ``:``/``{``/``}`` out)."""
    return part.translate(_ESCAPES)


def partition_of(sku: str, partitions: int) -> int:
    """The partition a sku lives in; stable across processes and versions."""
    if partitions == 1:
        return 0
    return zlib.crc32(sku.encode()) % partitions


def claim(prefix: str, name: str, ident: str) -> str:
    """The key that names the partition which first used ``ident`` as a ``name``."""
    return f"{prefix}:claim:{esc(name)}:{esc(ident)}"


class Keys:
    """Key names of one partition."""

    __slots__ = ("base",)

    def __init__(self, prefix: str, partition: int) -> None:
        self.base = f"{prefix}:{{p{partition}}}:"

    def level(self, sku: str, loc: str) -> str:
        return f"{self.base}lv:{esc(sku)}:{esc(loc)}"

    def holds(self, sku: str, loc: str) -> str:
        return f"{self.base}hd:{esc(sku)}:{esc(loc)}"

    def item(self, sku: str) -> str:
        return f"{self.base}it:{esc(sku)}"

    def locations(self, sku: str) -> str:
        return f"{self.base}locs:{esc(sku)}"

    def reservation(self, rid: str) -> str:
        return f"{self.base}rs:{esc(rid)}"

    def order(self, oid: str) -> str:
        return f"{self.base}or:{esc(oid)}"

    def customer(self, customer: str, sku: str) -> str:
        return f"{self.base}cu:{esc(customer)}:{esc(sku)}"

    def idempotency(self, kind: str, ref: str) -> str:
        return f"{self.base}id:{kind}:{esc(ref)}"

    def customer_holds(self, customer: str) -> str:
        return f"{self.base}ch:{esc(customer)}"

    def rate_customer(self, customer: str) -> str:
        return f"{self.base}rl:cu:{esc(customer)}"

    def rate_key(self, key_id: str) -> str:
        return f"{self.base}rl:key:{esc(key_id)}"

    def rate_item(self, customer: str, sku: str) -> str:
        return f"{self.base}rl:it:{esc(customer)}:{esc(sku)}"

    @property
    def expiries(self) -> str:
        return f"{self.base}exp"

    @property
    def skus(self) -> str:
        return f"{self.base}skus"

    @property
    def events(self) -> str:
        return f"{self.base}ev"

    @property
    def stats(self) -> str:
        return f"{self.base}stats"
