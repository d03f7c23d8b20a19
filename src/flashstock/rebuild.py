"""Rebuild: bring an empty (or wiped) Redis back to the ledger's truth.

``flashstock rebuild`` (also ``flashstock warm --from-db --full``) reads the
ledger's derived tables (``levels``, ``items``, ``reservations``, ``orders``)
and the few event payloads they point at, and writes, partition by partition,
in batches of Lua scripts (``lua/rebuild_*.lua``):

* every level, item policy and location priority, and the ``skus`` sets;
* every open order, and every finished one still inside its retention window
  (so replays of its order id answer as before);
* every active reservation with its holds, its ``exp`` entry, its customer's
  ``cu:`` counts and ``ch:`` entry, the same lines and the same ``expires_at``;
  finished ones inside their retention window, for replays. A hold whose TTL
  passed while Redis was away is expired at once by Redis's clock, with its
  ``expired`` event, so its units come back and the ledger hears of it;
* the idempotency records of adjustments, fulfillments and returns still
  inside their retention window.

Before any event can be written, each partition's stream gets its last id set
(``XSETID``) to at least the newest id the ledger holds for that partition:
the ledger is keyed by partition and stream id, so a reused id would make a
new event look like a duplicate and be dropped. The event counter
(``stats``) starts again at the ledger's row count.

What cannot come back: events that were only in the lost Redis (acknowledged
but not yet drained to the ledger), and the abuse limits' rate windows
(``rl:`` keys, a minute or so of attempt counts).

Run it with the API and the worker stopped (or the API answering 404s):
traffic written while a partition is half restored would be overwritten. A
partition that holds any data refuses to be rebuilt unless ``force``.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson
from sqlalchemy import Engine as DbEngine
from sqlalchemy import and_, func, or_, select

from flashstock.db.models import (
    dt_to_ms,
    items,
    ledger_events,
    levels,
    orders,
    reservations,
)
from flashstock.engine import Engine
from flashstock.keys import Keys, partition_of

log = logging.getLogger(__name__)

GROUP = "ledger"
BATCH = 500
OPEN_ORDERS = ("open", "partially_fulfilled")
ID_KINDS = {"counted": "adj", "adjusted": "adj", "fulfilled": "ful", "returned": "ret"}
# Kept in Redis only, never in the ledger: a rebuild leaves them out and may find them there.
TRANSIENT = ("ev", "stats", "rl:")
UNKNOWN_HASH = "unknown"  # a reservation from before events carried `h`: a replay gets a 409


class RebuildRefused(RuntimeError):
    """The partition already holds data; rebuilding over it needs ``force``."""


@dataclass
class RebuildReport:
    """What a rebuild wrote, per kind, and what it could not restore exactly."""

    levels: int = 0
    items: int = 0
    orders: int = 0
    reservations: int = 0
    holds_active: int = 0
    holds_expired: int = 0
    id_records: int = 0
    stream_ids: dict[int, str] = field(default_factory=dict)
    ledger_events: dict[int, int] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        out = [
            f"levels: {self.levels}  items: {self.items}  orders: {self.orders}  "
            f"reservations: {self.reservations} (active holds kept: {self.holds_active}, "
            f"expired on the way: {self.holds_expired})  idempotency records: {self.id_records}"
        ]
        for p, sid in sorted(self.stream_ids.items()):
            out.append(
                f"partition {p}: {self.ledger_events.get(p, 0)} ledger events, "
                f"stream continues after {sid}"
            )
        out += [f"warning: {w}" for w in self.warnings]
        return out


# --- reading the ledger ----------------------------------------------------------------------


@dataclass
class LedgerState:
    """The ledger rows a rebuild needs, already shaped for the Lua scripts, by partition."""

    last_ids: dict[int, tuple[int, int]] = field(default_factory=dict)
    counts: dict[int, int] = field(default_factory=dict)
    items: dict[int, list[dict[str, Any]]] = field(default_factory=lambda: defaultdict(list))
    levels: dict[int, list[list[Any]]] = field(default_factory=lambda: defaultdict(list))
    orders: dict[int, list[dict[str, Any]]] = field(default_factory=lambda: defaultdict(list))
    holds: dict[int, list[dict[str, Any]]] = field(default_factory=lambda: defaultdict(list))
    ids: dict[int, list[dict[str, Any]]] = field(default_factory=lambda: defaultdict(list))
    warnings: list[str] = field(default_factory=list)


def _ms(dt: Any) -> int | None:
    return None if dt is None else dt_to_ms(dt)


def _newest(rows: Iterable[Any], key: str) -> dict[Any, Any]:
    """The row with the highest stream position for each value of ``key``."""
    out: dict[Any, Any] = {}
    for r in rows:
        k = getattr(r, key)
        old = out.get(k)
        if old is None or (r.stream_ms, r.stream_seq) > (old.stream_ms, old.stream_seq):
            out[k] = r
    return out


def _stream_positions(conn: Any, state: LedgerState) -> None:
    t = ledger_events
    for p, n in conn.execute(select(t.c.partition, func.count()).group_by(t.c.partition)):
        state.counts[p] = int(n)
        last = conn.execute(
            select(t.c.stream_ms, t.c.stream_seq)
            .where(t.c.partition == p)
            .order_by(t.c.stream_ms.desc(), t.c.stream_seq.desc())
            .limit(1)
        ).one()
        state.last_ids[p] = (int(last.stream_ms), int(last.stream_seq))


def _priorities(payload: Any) -> tuple[dict[str, float], Any] | None:
    """Location -> allocation score and the score of later locations, from a policy event."""
    if not isinstance(payload, dict) or "prio" not in payload:
        return None
    locs = (payload.get("policy") or {}).get("locations") or []
    prio = payload.get("prio") or []
    if not isinstance(locs, list) or not isinstance(prio, list) or len(locs) != len(prio):
        return None
    return dict(zip(locs, prio, strict=True)), payload.get("prio_rest")


def _stock(conn: Any, state: LedgerState, n_parts: int, only: set[str] | None) -> None:
    e = ledger_events
    join = items.outerjoin(
        e,
        and_(
            e.c.partition == items.c.partition,
            e.c.stream_ms == items.c.ver_ms,
            e.c.stream_seq == items.c.ver_seq,
        ),
    )
    q = select(items.c.sku, items.c.policy, e.c.payload).select_from(join)
    prios: dict[str, tuple[dict[str, float], Any]] = {}
    unknown = 0
    seen: set[str] = set()
    for r in conn.execute(q):
        if only is not None and r.sku not in only:
            continue
        seen.add(r.sku)
        policy = {k: v for k, v in (r.policy or {}).items() if k != "locations"}
        pr = _priorities(r.payload)
        if pr is None:
            unknown += 1
            pr = ({}, None)
        prios[r.sku] = pr
        state.items[partition_of(r.sku, n_parts)].append(
            {"sku": r.sku, "policy": policy or {}, "rest": pr[1]}
        )
    if unknown:
        state.warnings.append(
            f"{unknown} item(s) have no location scores in their policy event (written before "
            "events carried them): their locations are restored with equal priority"
        )
    if only is not None:
        return  # reconcile --fix corrects levels by their difference, never by overwriting
    for r in conn.execute(select(levels).order_by(levels.c.sku, levels.c.location)):
        p = partition_of(r.sku, n_parts)
        if r.sku not in seen:  # a sku stocked by a count alone: set_level made its item 'deny'
            seen.add(r.sku)
            state.items[p].append({"sku": r.sku, "policy": {}, "rest": None})
        scores, rest = prios.get(r.sku, ({}, None))
        score = scores.get(r.location, rest if rest is not None else 0)
        state.levels[p].append(
            [r.sku, r.location, r.on_hand, r.reserved, r.committed, r.safety, score]
        )


def _order_lines(lines: Any) -> list[list[Any]]:
    return [
        [ln["sku"], ln["loc"], ln["qty"], ln["fulfilled"], ln["cancelled"], ln["returned"]]
        for ln in lines or []
    ]


def _orders(conn: Any, state: LedgerState, cutoff: Any, only: set[str] | None) -> None:
    t = orders
    q = select(t).where(
        or_(t.c.status.in_(OPEN_ORDERS), t.c.updated_at >= cutoff)
        if only is None
        else t.c.id.in_(sorted(only))
    )
    for r in conn.execute(q):
        state.orders[r.partition].append(
            {
                "id": r.id,
                "rid": r.reservation_id or "",
                "cu": r.customer_id or "",
                "at": _ms(r.updated_at),
                "lines": _order_lines(r.lines),
            }
        )


def _holds(conn: Any, state: LedgerState, cutoff: Any, only: set[str] | None) -> None:
    t, e = reservations, ledger_events
    # Active ones, and finished ones still kept for replays; or exactly the ones asked for.
    keep = (
        or_(t.c.status == "active", t.c.updated_at >= cutoff)
        if only is None
        else t.c.id.in_(sorted(only))
    )
    rows = conn.execute(select(t).where(keep)).all()
    first = _newest(
        conn.execute(
            select(e.c.reservation_id, e.c.stream_ms, e.c.stream_seq, e.c.payload)
            .select_from(e.join(t, e.c.reservation_id == t.c.id))
            .where(e.c.type == "reserved", keep)
        ),
        "reservation_id",
    )
    legacy = 0
    for r in rows:
        if not r.lines or r.expires_at is None:
            state.warnings.append(f"reservation {r.id!r}: its reserved event is not in the ledger")
            continue
        ev = first.get(r.id)
        payload = ev.payload if ev is not None else {}
        if "h" not in payload:
            legacy += 1
        ex = _ms(r.expires_at)
        rec: dict[str, Any] = {
            "id": r.id,
            "st": r.status,
            "cu": r.customer_id or "",
            "ex": ex,
            "h": payload.get("h", UNKNOWN_HASH),
            "ln": [[ln["sku"], ln["loc"], ln["qty"], ln.get("bo", 0)] for ln in r.lines],
            "at": _ms(r.updated_at),
            "t0": _ms(r.created_at),
        }
        if payload.get("mh"):
            rec["mh"] = payload["mh"]
        if isinstance(payload.get("exp"), int) and payload["exp"] != ex:
            rec["x0"] = payload["exp"]  # extended: replays answer the first expiry
        if r.order_id:
            rec["oi"] = r.order_id
        state.holds[r.partition].append(rec)
    if legacy:
        state.warnings.append(
            f"{legacy} reservation(s) were made before events carried their body hash: "
            "a replay of one is refused as a conflict instead of answered"
        )


def _ids(conn: Any, state: LedgerState, cutoff: Any, only: set[str] | None) -> None:
    e = ledger_events
    q = select(
        e.c.partition, e.c.stream_ms, e.c.stream_seq, e.c.type, e.c.ref, e.c.at, e.c.order_id,
        e.c.payload,
    ).where(e.c.ref.is_not(None), e.c.type.in_(ID_KINDS), e.c.at >= cutoff)  # fmt: skip
    rows = [r for r in conn.execute(q) if only is None or r.ref in only]
    newest = _newest(
        (_Keyed(r, (ID_KINDS[r.type], r.ref)) for r in rows),
        "key",
    )
    skipped = 0
    for (kind, ref), k in newest.items():
        r, payload = k.row, k.row.payload
        if "h" not in payload:
            skipped += 1
            continue
        rec: dict[str, Any] = {"kind": kind, "ref": ref, "h": payload["h"], "at": _ms(r.at)}
        if kind == "adj":
            line = (payload.get("lines") or [None])[0]
            if not line:
                continue
            rec.update(sku=line["sku"], loc=line["loc"], level=line["lv"])
        else:
            snap = payload.get("order") or {}
            rec["order"] = {
                "id": r.order_id,
                "rid": snap.get("rid", ""),
                "cu": snap.get("cust", ""),
                "lines": _order_lines(snap.get("lines")),
            }
        state.ids[r.partition].append(rec)
    if skipped:
        state.warnings.append(
            f"{skipped} idempotency record(s) were written before events carried the body "
            "hash: a replay of one is applied again instead of answered"
        )


@dataclass
class _Keyed:
    row: Any
    key: tuple[str, str]

    @property
    def stream_ms(self) -> int:
        return int(self.row.stream_ms)

    @property
    def stream_seq(self) -> int:
        return int(self.row.stream_seq)


def read_ledger(
    db: DbEngine,
    now_ms: int,
    retention_ms: int,
    partitions: int,
    *,
    only: dict[str, set[str]] | None = None,
) -> LedgerState:
    """One consistent read of what a rebuild writes (one transaction, REPEATABLE READ).

    Args:
        only: restrict to these ``skus``, ``orders``, ``reservations`` and ``refs``
            (what ``reconcile --fix`` restores); None reads everything.
    """
    from flashstock.db.models import ms_to_dt

    cutoff = ms_to_dt(now_ms - retention_ms)
    state = LedgerState()
    conn = db.connect()
    if db.dialect.name == "postgresql":
        conn = conn.execution_options(isolation_level="REPEATABLE READ")
    with conn, conn.begin():
        _stream_positions(conn, state)
        o = only or {}
        _stock(conn, state, partitions, o.get("skus") if only is not None else None)
        _orders(conn, state, cutoff, o.get("orders") if only is not None else None)
        _holds(conn, state, cutoff, o.get("reservations") if only is not None else None)
        _ids(conn, state, cutoff, o.get("refs") if only is not None else None)
    if only is None:
        _check_conservation(state)
    for p in sorted({*state.counts, *state.holds, *state.orders} - set(range(partitions))):
        state.warnings.append(
            f"the ledger has partition {p} but FLASHSTOCK_PARTITIONS={partitions}: not restored"
        )
    return state


def _check_conservation(state: LedgerState) -> None:
    """The ledger's levels against its own holds and orders: a gap means lost events."""
    want: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
    for rows in state.holds.values():
        for r in rows:
            if r["st"] == "active":
                for sku, loc, qty, _ in r["ln"]:
                    want[(sku, loc)][0] += qty
    for rows in state.orders.values():
        for o in rows:
            for sku, loc, qty, ful, can, _ in o["lines"]:
                want[(sku, loc)][1] += qty - ful - can
    for rows in state.levels.values():
        for sku, loc, _, res, com, *_ in rows:
            w = want.pop((sku, loc), [0, 0])
            if w != [res, com]:
                state.warnings.append(
                    f"{sku} @ {loc}: the ledger's level has reserved={res} committed={com}, "
                    f"its holds and orders add up to {w[0]} and {w[1]}"
                )


# --- writing Redis ---------------------------------------------------------------------------


def _chunks(rows: list[Any], n: int) -> Iterator[list[Any]]:
    for i in range(0, len(rows), n):
        yield rows[i : i + n]


def _s(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


async def redis_now_ms(client: Any) -> int:
    sec, usec = await client.time()
    return int(sec) * 1000 + int(usec) // 1000


async def _occupied(client: Any, keys: Keys) -> list[str]:
    """Keys of the partition that a rebuild would write over (not the transient ones)."""
    found = []
    async for k in client.scan_iter(match=f"{keys.base}*", count=1000):
        rest = _s(k)[len(keys.base) :]
        if not rest.startswith(TRANSIENT):
            found.append(rest)
            if len(found) >= 5:
                break
    return found


def _id_text(pos: tuple[int, int]) -> str:
    return f"{pos[0]}-{pos[1]}"


async def continue_stream(client: Any, keys: Keys, last: tuple[int, int] | None) -> str:
    """Make sure the partition's stream and its ``ledger`` group exist and that new entries
    get ids above ``last`` (the newest id in the ledger). Returns the stream's last id."""
    from redis.exceptions import ResponseError

    try:
        await client.xgroup_create(keys.events, GROUP, id="0", mkstream=True)
    except ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise
    info = await client.xinfo_stream(keys.events)
    ms, _, seq = _s(info["last-generated-id"]).partition("-")
    current = (int(ms), int(seq))
    if last is not None and last > current:
        await client.execute_command("XSETID", keys.events, _id_text(last))
        current = last
    return _id_text(current)


async def write(
    engine: Engine, state: LedgerState, report: RebuildReport, *, batch: int = BATCH
) -> None:
    """Write ``state`` into Redis: stream ids first, then stock, orders, holds, records."""
    client = engine.redis
    for p, keys in enumerate(engine.partitions):
        report.stream_ids[p] = await continue_stream(client, keys, state.last_ids.get(p))
        report.ledger_events[p] = state.counts.get(p, 0)
        await client.hsetnx(keys.stats, "events", state.counts.get(p, 0))
        its, lvs = state.items.get(p, []), state.levels.get(p, [])
        for i in range(0, max(len(its), len(lvs)), batch):
            await engine.rebuild_stock(
                keys, orjson.dumps(its[i : i + batch]), orjson.dumps(lvs[i : i + batch])
            )
        report.items += len(its)
        report.levels += len(lvs)
        for chunk in _chunks(state.orders.get(p, []), batch):
            report.orders += await engine.rebuild_orders(keys, orjson.dumps(chunk))
        for chunk in _chunks(state.holds.get(p, []), batch):
            done = await engine.rebuild_holds(keys, orjson.dumps(chunk))
            report.reservations += int(done["restored"])
            report.holds_expired += int(done["expired"])
            report.holds_active += sum(1 for r in chunk if r["st"] == "active")
        for chunk in _chunks(state.ids.get(p, []), batch):
            report.id_records += await engine.rebuild_ids(keys, orjson.dumps(chunk))
    report.holds_active -= report.holds_expired
    report.warnings += state.warnings


async def rebuild(
    engine: Engine, db: DbEngine, *, force: bool = False, batch: int = BATCH
) -> RebuildReport:
    """Restore every partition of ``engine``'s key prefix from the ledger ``db``.

    Raises:
        RebuildRefused: a partition already holds data and ``force`` is not set.
    """
    if not force:
        for keys in engine.partitions:
            if found := await _occupied(engine.redis, keys):
                raise RebuildRefused(
                    f"{keys.base} is not empty ({', '.join(found)} …): rebuild restores an "
                    "empty Redis; use --force to write over what is there"
                )
            if await engine.redis.xlen(keys.events):
                raise RebuildRefused(
                    f"{keys.events} holds events the ledger may not have yet: let the worker "
                    "drain them, or use --force"
                )
    now = await redis_now_ms(engine.redis)
    s = engine.settings
    state = await asyncio.to_thread(read_ledger, db, now, s.retention_seconds * 1000, s.partitions)
    report = RebuildReport()
    await write(engine, state, report, batch=batch)
    log.info("rebuild: %s", "; ".join(report.lines()))
    return report
