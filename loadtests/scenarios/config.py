"""Scenario options, read from the environment so a headless run needs no extra flags.

| variable | default | meaning |
|---|---|---|
| ``FLASHSTOCK_HOT_SKUS`` | | comma-separated skus on sale |
| ``FLASHSTOCK_HOT_SKUS_FILE`` | | or a file of them: one per line (``#`` comments), or JSON (a list, or an object keyed by sku) |
| ``FLASHSTOCK_LOAD_COMMIT_SHARE`` | 0.6 | share of carts that check out |
| ``FLASHSTOCK_LOAD_RELEASE_SHARE`` | 0.15 | share of carts emptied explicitly (the rest are abandoned and expire) |
| ``FLASHSTOCK_LOAD_LATE_SHARE`` | 0.05 | share of check-outs that come after the hold expired |
| ``FLASHSTOCK_LOAD_TTL_SECONDS`` | 15 | hold time of a cart, short so abandoned carts come back during the run |
| ``FLASHSTOCK_LOAD_MAX_LINES`` | 2 | lines per cart (1 to this, distinct skus) |
| ``FLASHSTOCK_LOAD_MAX_QUANTITY`` | 2 | units per line (1 to this) |
| ``FLASHSTOCK_LOAD_WAIT`` | 0.2,1.5 | seconds a buyer waits between actions (min,max) |
| ``FLASHSTOCK_LOAD_TALLY`` | | file where each locust process writes the units it saw committed, per sku |
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path


def parse_sku_file(path: str | Path) -> list[str]:
    """Skus from a file: a JSON list, a JSON object (its keys), or one sku per line."""
    text = Path(path).read_text(encoding="utf-8")
    if text.lstrip().startswith(("[", "{")):
        data = json.loads(text)
        return [str(s) for s in (data.keys() if isinstance(data, dict) else data)]
    skus = []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if line:
            skus.append(line)
    return skus


def hot_skus(environ: os._Environ[str] | dict[str, str] | None = None) -> list[str]:
    """The skus on sale, from ``FLASHSTOCK_HOT_SKUS`` or ``FLASHSTOCK_HOT_SKUS_FILE``."""
    env = os.environ if environ is None else environ
    listed = [s.strip() for s in env.get("FLASHSTOCK_HOT_SKUS", "").split(",") if s.strip()]
    if not listed and env.get("FLASHSTOCK_HOT_SKUS_FILE"):
        listed = parse_sku_file(env["FLASHSTOCK_HOT_SKUS_FILE"])
    # Keep the first occurrence of each sku, in order.
    return list(dict.fromkeys(listed))


def _share(env: os._Environ[str] | dict[str, str], name: str, default: float) -> float:
    value = float(env.get(name, default))
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be between 0 and 1, got {value}")
    return value


def _positive(env: os._Environ[str] | dict[str, str], name: str, default: int) -> int:
    value = int(env.get(name, default))
    if value < 1:
        raise ValueError(f"{name} must be at least 1, got {value}")
    return value


def _wait(raw: str) -> tuple[float, float]:
    low, _, high = raw.partition(",")
    lo, hi = float(low), float(high or low)
    if not 0 <= lo <= hi:
        raise ValueError(f"FLASHSTOCK_LOAD_WAIT must be min,max with 0 <= min <= max, got {raw!r}")
    return lo, hi


@dataclass(frozen=True)
class SaleOptions:
    skus: tuple[str, ...]
    commit_share: float
    release_share: float
    late_share: float
    ttl_seconds: int
    max_lines: int
    max_quantity: int
    tally_path: str | None
    wait: tuple[float, float] = (0.2, 1.5)

    @property
    def abandon_share(self) -> float:
        return max(0.0, 1.0 - self.commit_share - self.release_share)

    @classmethod
    def from_env(cls, environ: os._Environ[str] | dict[str, str] | None = None) -> SaleOptions:
        env = os.environ if environ is None else environ
        skus = hot_skus(env)
        if not skus:
            raise ValueError(
                "no hot skus: set FLASHSTOCK_HOT_SKUS=sku1,sku2 or FLASHSTOCK_HOT_SKUS_FILE"
            )
        commit = _share(env, "FLASHSTOCK_LOAD_COMMIT_SHARE", 0.6)
        release = _share(env, "FLASHSTOCK_LOAD_RELEASE_SHARE", 0.15)
        if commit + release > 1.0 + 1e-9:
            raise ValueError(
                "FLASHSTOCK_LOAD_COMMIT_SHARE + FLASHSTOCK_LOAD_RELEASE_SHARE exceed 1"
            )
        return cls(
            skus=tuple(skus),
            commit_share=commit,
            release_share=release,
            late_share=_share(env, "FLASHSTOCK_LOAD_LATE_SHARE", 0.05),
            ttl_seconds=_positive(env, "FLASHSTOCK_LOAD_TTL_SECONDS", 15),
            max_lines=_positive(env, "FLASHSTOCK_LOAD_MAX_LINES", 2),
            max_quantity=_positive(env, "FLASHSTOCK_LOAD_MAX_QUANTITY", 2),
            tally_path=env.get("FLASHSTOCK_LOAD_TALLY") or None,
            wait=_wait(env.get("FLASHSTOCK_LOAD_WAIT", "0.2,1.5")),
        )
