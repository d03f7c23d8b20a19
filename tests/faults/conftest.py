"""The fault suite's summary: faults injected per kind, acknowledged changes lost, duplicated, oversold."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

RESULTS: list[dict[str, Any]] = []


@pytest.fixture
def fault_results() -> list[dict[str, Any]]:
    return RESULTS


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not RESULTS:
        return
    tr = terminalreporter
    tr.section("fault injection")
    total: Counter[str] = Counter()
    for r in RESULTS:
        total.update(r["faults"])
        tr.write_line(
            f"{r['mode']}: {sum(r['faults'].values())} faults in {r.get('seconds', '?')} s, "
            f"{r['acked']} acknowledged changes ({dict(r['by_kind'])}), {r['ledger_rows']} ledger "
            f"rows, {r['retries']} client retries; lost {len(r['lost'])}, duplicated "
            f"{r['duplicated']}, oversold {r['oversold']}, reconcile "
            f"{'clean' if r['reconcile'] == 0 else 'NOT clean'}"
        )
        if r["windows"]:
            spans = ", ".join(f"{(end - start) * 1000:.0f} ms" for start, end in r["windows"])
            tr.write_line(
                f"  simulated machine crashes (AOF everysec): {r['lost_in_window']} acknowledged "
                f"changes lost, all inside the crash windows ({spans}); reconcile named "
                f"{r['named_by_reconcile']} persisted events Redis had lost, --fix restored them"
            )
        if r.get("holds_rebuilt"):
            tr.write_line(
                f"  total losses: {r['holds_rebuilt']} active holds rebuilt, same expiry; "
                f"{r['holds_expired_in_rebuild']} whose TTL ran out before the rebuild ended, "
                "expired by it"
            )
    for kind, n in sorted(total.items()):
        tr.write_line(f"  {n:>3}  {kind}")
    lost = sum(len(r["lost"]) for r in RESULTS)
    tr.write_line(
        f"faults injected: {sum(total.values())}; lost {lost}, duplicated "
        f"{sum(r['duplicated'] for r in RESULTS)}, oversold {sum(r['oversold'] for r in RESULTS)}"
    )
