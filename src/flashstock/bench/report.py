"""A run's results as a user wants them: the goals table, a JSON file, a PNG plot, Markdown."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

# name, where in the results, goal, comparison, unit
GOALS: list[tuple[str, tuple[str, ...], float, str, str]] = [
    ("reserve vs bare endpoint (HTTP)", ("http", "reserve_vs_bare"), 0.8, ">=", "x"),
    ("engine vs redis-benchmark EVALSHA", ("ceiling", "engine_vs_redis"), 0.5, ">=", "x"),
    ("vs optimistic locking (worst setting)", ("postgres", "min_vs_optimistic"), 10, ">=", "x"),
    ("vs best PostgreSQL approach (worst setting)", ("postgres", "min_vs_best_postgres"), 5, ">=", "x"),
    ("flashstock spurious refusals", ("postgres", "flashstock_spurious"), 0, "==", ""),
    ("flashstock oversell", ("postgres", "flashstock_oversell"), 0, "==", "units"),
    ("sold-out refusals/s vs reserve/s", ("sold_out", "refusals_vs_reserve"), 2, ">=", "x"),
    ("refused after units came back (max)", ("sold_out_bound", "max_ms"), 100, "<=", "ms"),
    ("ledger lag p99", ("ledger_lag", "p99_ms"), 1000, "<", "ms"),
    ("worker drain vs peak reserve rate, one worker", ("drain", "drain_vs_peak_reserve"), 3, ">=", "x"),
    ("worker drain vs peak reserve rate, two workers", ("drain_2_workers", "drain_vs_peak_reserve"), 3, ">=", "x"),
]  # fmt: skip


def _get(results: dict[str, Any], path: tuple[str, ...]) -> Any:
    cur: Any = results
    for p in path:
        if not isinstance(cur, dict) or p not in cur:
            return None
        cur = cur[p]
    return cur


def goals(results: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for name, path, goal, op, unit in GOALS:
        v = _get(results, path)
        met = None
        if isinstance(v, int | float):
            met = {">=": v >= goal, "<=": v <= goal, "<": v < goal, "==": v == goal}[op]
        out.append({"goal": name, "measured": v, "target": f"{op} {goal:g}{unit and ' ' + unit}",
                    "met": met})  # fmt: skip
    return out


def write_json(run: dict[str, Any], path: Path) -> None:
    path.write_text(json.dumps(run, indent=1, default=str) + "\n")


def markdown(run: dict[str, Any]) -> str:
    m = run["machine"]
    lines = [
        f"Run {run['started_at']} · `{run['command']}` · {m.get('nproc')} cores, "
        f"{m.get('memory')} · load average before {m.get('load_before')}, after "
        f"{m.get('load_after')} · Python {m.get('python')}, Redis {m.get('redis')}, "
        f"PostgreSQL {m.get('postgres', {}).get('server_version', '-')}, "
        f"generator {run['options'].get('generator_used')}",
        "",
        "| goal | measured | target | met |",
        "|---|---|---|---|",
    ]
    for g in run["goals"]:
        met = {True: "yes", False: "**no**", None: "not measured"}[g["met"]]
        lines.append(f"| {g['goal']} | {g['measured']} | {g['target']} | {met} |")
    r = {k: v for k, v in run["results"].items() if "error" not in v}
    if "postgres" in r:
        lines += ["", "| setting | system | successes/s | p50 ms | p99 ms | spurious | oversell |",
                  "|---|---|---|---|---|---|---|"]  # fmt: skip
        for key, row in r["postgres"]["table"].items():
            for system, v in row.items():
                lines.append(
                    f"| {key} | {system} | {v['successes_per_s']} | {v['p50_ms']} | "
                    f"{v['p99_ms']} | {v['spurious_refusals']} | {v['oversell']} |"
                )
    if "shape" in r or "http_1_worker" in r:
        lines += ["", "| shape | reservations/s |", "|---|---|"]
        for w in ("http_1_worker", "http"):
            if w in r:
                lines.append(
                    f"| {r[w]['workers']} uvicorn worker(s), 1 line | {r[w]['reserve']['rps']} |"
                )
        for k in ("cart_1", "cart_5", "cart_20", "spread_10000"):
            if k in r.get("shape", {}):
                lines.append(f"| {k.replace('_', ' ')} | {r['shape'][k]['rps']} |")
        for k in ("drain", "drain_2_workers"):
            if k in r:
                lines.append(
                    f"| ledger drain, {r[k]['workers']} worker(s), events/s | {r[k]['events_per_s']} |"
                )
        if "memory" in r:
            lines.append(f"| Redis bytes per active hold (event trimmed / still in the stream) | "
                         f"{r['memory']['bytes_per_hold']} / {r['memory']['bytes_per_hold_with_event']} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def plot(run: dict[str, Any], path: Path) -> bool:
    """The comparisons as a PNG; False when matplotlib is not installed (``pip install '.[bench]'``)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    r = {k: v for k, v in run["results"].items() if "error" not in v}
    fig, axes = plt.subplots(2, 2, figsize=(13, 9))
    fig.suptitle(f"flashstock bench {run['started_at']} ({run['machine'].get('nproc')} cores)")

    ax = axes[0][0]
    names, vals = [], []
    for key in ("http_1_worker", "http"):
        if key in r:
            for ep in ("floor", "bare", "reserve"):
                names.append(f"{ep}\n{r[key]['workers']}w")
                vals.append(r[key][ep]["rps"])
    ax.bar(names, vals, color=["#999", "#bbb", "#2a7"] * 2)
    ax.set_title("HTTP: requests/s, same server")

    ax = axes[0][1]
    if "postgres" in r:
        table = r["postgres"]["table"]
        keys = list(table)
        systems = list(next(iter(table.values())))
        width = 0.8 / len(systems)
        for i, s in enumerate(systems):
            ax.bar([k + i * width for k in range(len(keys))],
                   [max(table[k][s]["successes_per_s"], 0.1) for k in keys], width, label=s)  # fmt: skip
        ax.set_xticks([k + 0.4 - width / 2 for k in range(len(keys))])
        ax.set_xticklabels([k.replace("/", "\n") for k in keys], fontsize=8)
        ax.set_yscale("log")
        ax.legend(fontsize=8)
        ax.set_title("successes/s: flashstock vs PostgreSQL (log)")

    ax = axes[1][0]
    gs = [g for g in run["goals"] if isinstance(g["measured"], int | float)]
    ratios = [g for g in gs if g["target"].startswith(">=") and g["target"].endswith("x")]
    if ratios:
        ax.barh([g["goal"] for g in ratios],
                [g["measured"] / float(g["target"].split()[1]) for g in ratios],
                color=["#2a7" if g["met"] else "#d44" for g in ratios])  # fmt: skip
        ax.axvline(1, color="k", lw=1)
        ax.set_title("measured / goal (>= 1 is met)")
        ax.tick_params(axis="y", labelsize=8)

    ax = axes[1][1]
    if "shape" in r:
        ks = [k for k in ("cart_1", "cart_5", "cart_20", "spread_10000") if k in r["shape"]]
        ax.bar([k.replace("_", " ") for k in ks], [r["shape"][k]["rps"] for k in ks], color="#27a")
        ax.set_title("shape: reservations/s")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True
