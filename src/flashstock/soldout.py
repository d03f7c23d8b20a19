"""Per-process memory of lines Redis just refused for want of stock.

After a sell-out, every buyer's retry is a refusal; answering it from memory
saves the Redis call. The memory may only ever refuse what Redis would
refuse, so it is kept narrow:

* A fact is learnt from a refusal of a cart whose skus each appear in one
  line: "``q`` or more of ``sku`` (at ``location``, or allocated with
  ``split``) is refused". It is answered only for carts made entirely of such
  lines, each asking at least as much, so the script would have found every
  line short and nothing else to refuse first.
* A fact lives ``soldout_cache_ms`` (a setting, 50 by default) from the moment
  the refused call was *sent*, so it never outlives the stock it describes by
  more than that; and never past the partition's first hold expiry, which
  the script reports (``cache_ms``): units freed by a TTL are never refused.
* Units this process gives back (release, cancel, restock, count, return,
  policy change) clear the sku's facts at once.
* The engine asks only for requests without a reservation id (a replay must
  answer its first result) and with the global abuse limits off; the script
  reports no ``cache_ms`` for items with limits of their own.

Units given back through another process are seen within the bound; the
benchmark measures it (docs/benchmarks.md).
"""

from __future__ import annotations

import time
from typing import Any

Key = tuple[str, str | None, bool]


class SoldOutCache:
    def __init__(self, ttl_ms: int) -> None:
        self.ttl = ttl_ms / 1000
        self._facts: dict[
            Key, tuple[int, int, float]
        ] = {}  # key -> (least refused q, available, until)
        self._cleared = 0.0

    @property
    def enabled(self) -> bool:
        return self.ttl > 0

    @staticmethod
    def lines(items: list[Any], split: bool) -> dict[Key, int] | None:
        """The cart as ``{(sku, location, split): quantity}``, or None if a sku repeats."""
        out: dict[Key, int] = {}
        skus: set[str] = set()
        for i in range(0, len(items), 3):
            sku, loc, q = items[i], items[i + 1] or None, items[i + 2]
            if sku in skus:
                return None
            skus.add(sku)
            out[(sku, loc, split if loc is None else True)] = q
        return out

    def refusal(self, cart: dict[Key, int]) -> list[dict[str, Any]] | None:
        """The short lines to refuse the cart with, or None to ask Redis."""
        now = time.monotonic()
        short = []
        for key, q in cart.items():
            fact = self._facts.get(key)
            if fact is None or fact[2] <= now or q < fact[0]:
                return None
            short.append({"sku": key[0], "location": key[1], "requested": q, "available": fact[1]})
        return short

    def learn(
        self, cart: dict[Key, int], short: list[dict[str, Any]], cache_ms: int, sent: float
    ) -> None:
        """Remember the short lines of a refusal sent at monotonic time ``sent``."""
        ttl = self.ttl if cache_ms < 0 else min(self.ttl, cache_ms / 1000)
        if ttl <= 0 or sent < self._cleared:  # sent before units came back here: stale
            return
        for line in short:
            loc = line.get("location")
            key = next((k for k in cart if k[0] == line["sku"] and k[1] == loc), None)
            if key is not None and isinstance(line.get("available"), int):
                self._facts[key] = (line["requested"], line["available"], sent + ttl)

    def forget(self, skus: Any = None) -> None:
        """Clear the facts about ``skus`` (all of them when None)."""
        self._cleared = time.monotonic()
        if skus is None:
            self._facts.clear()
            return
        gone = set(skus)
        for key in [k for k in self._facts if k[0] in gone]:
            del self._facts[key]
