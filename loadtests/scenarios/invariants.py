"""Per-level invariants of SPEC §2, judged on one ``GET /v1/stock/{sku}`` body.

Shared by the scenario (a live check on every browse) and ``loadtests.check``.
"""

from __future__ import annotations

from typing import Any

LEVEL_FIELDS = ("on_hand", "reserved", "committed", "safety_stock", "available")


def floor_of(policy: dict[str, Any]) -> int | None:
    """Lowest ``available`` a reservation may leave: 0 for ``deny``, ``-backorder_limit``
    for ``allow``/``notify``, None when backorders are unlimited."""
    if policy.get("backorder", "deny") == "deny":
        return 0
    limit = policy.get("backorder_limit")
    return None if limit is None else -int(limit)


def level_violations(stock: dict[str, Any]) -> list[str]:
    """Every way the levels of one sku break SPEC §2 (empty when they hold)."""
    sku = stock.get("sku", "?")
    floor = floor_of(stock.get("policy") or {})
    problems: list[str] = []
    sums = dict.fromkeys(LEVEL_FIELDS[:4], 0)
    sellable = 0
    for lv in stock.get("locations", []):
        where = f"{sku}@{lv.get('location')}"
        missing = [f for f in LEVEL_FIELDS if not isinstance(lv.get(f), int)]
        if missing:
            problems.append(f"{where}: fields missing or not integers: {', '.join(missing)}")
            continue
        for f in ("on_hand", "reserved", "committed", "safety_stock"):
            if lv[f] < 0:
                problems.append(f"{where}: {f} = {lv[f]} < 0")
            sums[f] += lv[f]
        expected = lv["on_hand"] - lv["reserved"] - lv["committed"] - lv["safety_stock"]
        if lv["available"] != expected:
            problems.append(f"{where}: available {lv['available']} != on_hand - reserved - "
                            f"committed - safety_stock = {expected}")  # fmt: skip
        if floor is not None and lv["available"] < floor:
            problems.append(f"{where}: OVERSOLD, available {lv['available']} < floor {floor}")
        sellable += max(lv["available"], 0)
    total = stock.get("total") or {}
    for f, n in sums.items():
        if total.get(f) != n:
            problems.append(f"{sku} total: {f} {total.get(f)} != sum of locations {n}")
    if total.get("available") != sellable:
        problems.append(f"{sku} total: available {total.get('available')} != "
                        f"sum of max(available, 0) = {sellable}")  # fmt: skip
    return problems
