"""The real thing, to break: API (uvicorn, 2 workers), ledger worker, private Redis, PostgreSQL
behind a relay, and shoppers whose 2xx answers are the record of what was acknowledged."""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2 as httpx
import redis
from redis_server import RedisServer, free_port
from sqlalchemy import text

SRC = str(Path(__file__).resolve().parents[2] / "src")
HOT = [f"HOT-{i}" for i in range(2)]
PLAIN = [f"SKU-{i}" for i in range(6)]


def _env(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLASHSTOCK_")}
    env["PYTHONPATH"] = os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")])
    return {**env, **extra}


def children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(x) for x in (task / "children").read_text().split()]
        except OSError:
            pass
    return out


def api_workers(pid: int) -> list[int]:
    """uvicorn's worker processes (not multiprocessing's resource tracker)."""
    out = []
    for c in children(pid):
        try:
            if b"spawn_main" in Path(f"/proc/{c}/cmdline").read_bytes():
                out.append(c)
        except OSError:
            pass
    return out


@dataclass
class Stack:
    """One store under test. ``appendfsync``: everysec (fast) or always (strict)."""

    tmp: Path
    pg_url: str
    relay: Any  # the ``forwarder`` fixture: starts a TCP relay to PostgreSQL on a port
    appendfsync: str = "everysec"
    prefix: str = "fsf"
    faults: Counter[str] = field(default_factory=Counter)
    log: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.redis = RedisServer(self.tmp / "redis", appendfsync=self.appendfsync)
        self.pg_port = free_port()
        self.fwd = self.relay(self.pg_port)
        self.api_port = free_port()
        self.fault_dir = self.tmp / "faults"
        self.fault_dir.mkdir()
        self.api: subprocess.Popen[bytes] | None = None
        self.worker: subprocess.Popen[bytes] | None = None
        self.durability = "strict" if self.appendfsync == "always" else "fast"
        base, _, db = self.pg_url.rpartition("/")
        self.worker_db = f"postgresql://postgres@127.0.0.1:{self.pg_port}/{db}"
        self.api_db = self.pg_url  # the API's own database link (readiness only)

    def env(self, db_url: str) -> dict[str, str]:
        return _env({
            "FLASHSTOCK_REDIS_URL": self.redis.url, "FLASHSTOCK_DATABASE_URL": db_url,
            "FLASHSTOCK_KEY_PREFIX": self.prefix, "FLASHSTOCK_DURABILITY": self.durability,
            "FLASHSTOCK_WORKER_CLAIM_IDLE_MS": "500", "FLASHSTOCK_WORKER_BLOCK_MS": "50",
            "FLASHSTOCK_WORKER_BATCH": "200", "FLASHSTOCK_SWEEP_INTERVAL_MS": "200",
            "FLASHSTOCK_RECONCILE_INTERVAL_SECONDS": "0", "FLASHSTOCK_WORKER_FAULT_DIR": str(self.fault_dir),
        })  # fmt: skip

    # --- processes ------------------------------------------------------------------------

    def start(self) -> None:
        self.redis.start()
        subprocess.run([sys.executable, "-m", "flashstock.cli", "db", "upgrade"],
                       env=self.env(self.pg_url), check=True, capture_output=True)  # fmt: skip
        self.api = subprocess.Popen(
            [sys.executable, "-m", "flashstock.cli", "serve", "--workers", "2", "--port", str(self.api_port)],
            env=self.env(self.api_db), stdout=subprocess.DEVNULL, stderr=open(self.tmp / "api.log", "ab"),
        )  # fmt: skip
        self.start_worker()
        self.wait_api()

    def start_worker(self) -> None:
        self.worker = subprocess.Popen(
            [sys.executable, "-m", "flashstock.cli", "worker"], env=self.env(self.worker_db),
            stdout=subprocess.DEVNULL, stderr=open(self.tmp / "worker.log", "ab"),
        )  # fmt: skip

    def wait_api(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    if len(api_workers(self.api.pid)) >= 2:  # type: ignore[union-attr]
                        return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError("API did not come up: " + (self.tmp / "api.log").read_text()[-3000:])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def stop(self) -> None:
        for p in (self.api, self.worker):
            if p is not None and p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in (self.api, self.worker):
            if p is not None:
                try:
                    p.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    p.kill()
        self.redis.stop()

    def sync(self) -> redis.Redis:
        return redis.Redis.from_url(self.redis.url, socket_timeout=10)

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "flashstock.cli", *args],
                              env=self.env(self.pg_url), capture_output=True, text=True, timeout=120)  # fmt: skip

    # --- faults ---------------------------------------------------------------------------

    def kill_worker_at(self, point: str | None) -> None:
        """kill -9 the worker: at a point of a batch (before insert, after commit), or now."""
        assert self.worker is not None
        if point is not None:
            reached = self.fault_dir / f"{point}.reached"
            (self.fault_dir / point).write_text("")
            deadline = time.monotonic() + 15
            while not reached.exists():
                if time.monotonic() > deadline:
                    raise RuntimeError(f"worker never reached {point}")
                time.sleep(0.01)
            reached.unlink()
        self.worker.send_signal(signal.SIGKILL)
        self.worker.wait(timeout=10)
        self.faults[f"worker kill -9 ({point or 'anywhere'})"] += 1
        self.start_worker()

    def kill_api_worker(self) -> None:
        assert self.api is not None
        pid = random.choice(api_workers(self.api.pid))
        os.kill(pid, signal.SIGKILL)
        self.faults["API worker kill -9, requests in flight"] += 1
        deadline = time.monotonic() + 20  # uvicorn's supervisor starts another
        while pid in api_workers(self.api.pid) or len(api_workers(self.api.pid)) < 2:
            if time.monotonic() > deadline:
                raise RuntimeError("the API worker was not replaced")
            time.sleep(0.05)

    def close_relay(self) -> None:
        try:  # wakes the relay's accept() so the port is free again
            self.fwd.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.fwd.close()

    def open_relay(self) -> None:
        for _ in range(100):
            try:
                self.fwd = self.relay(self.pg_port)
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("the relay's port stayed busy")

    async def postgres_outage(self, seconds: float) -> None:
        self.close_relay()
        await asyncio.sleep(seconds)
        self.open_relay()
        self.faults["PostgreSQL unreachable"] += 1

    def restart_redis(self) -> None:
        self.redis.kill()
        self.redis.start()
        self.faults[f"Redis kill -9, restart from AOF ({self.appendfsync})"] += 1

    # --- state ----------------------------------------------------------------------------

    def drained(self) -> bool:
        """Every event the streams hold is persisted and acknowledged."""
        r = self.sync()
        stream = f"{self.prefix}:{{p0}}:ev"
        try:
            last = r.xinfo_stream(stream)["last-generated-id"]
            group = next(g for g in r.xinfo_groups(stream) if g["name"] == b"ledger")
        except (redis.RedisError, StopIteration):
            return False
        return group["pending"] == 0 and group["last-delivered-id"] == last

    async def wait_drained(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not self.drained():
            if time.monotonic() > deadline:
                raise RuntimeError("the worker did not drain")
            await asyncio.sleep(0.05)


@dataclass
class Ack:
    kind: str  # reserved released expired committed fulfilled cancelled adjusted
    key: str
    at: float


class Shoppers:
    """Buyers driving the API; every 2xx mutation is recorded as acknowledged.

    A request that fails (connection reset, 503) is repeated with the same ids until it
    gets an answer, as a careful client does; idempotency makes that safe.
    """

    def __init__(self, url: str, n: int = 12, seed: int = 1) -> None:
        self.url, self.n = url, n
        self.rnd = random.Random(seed)
        self.acks: list[Ack] = []
        self.refused: Counter[str] = Counter()
        self.retries = 0
        self.gave_up = 0
        self.running = asyncio.Event()
        self.running.set()
        self.in_flight = 0
        self.stopped = False
        self.seq = 0

    async def call(
        self, client: httpx.AsyncClient, method: str, path: str, body: Any = None
    ) -> httpx.Response | None:
        for attempt in range(200):
            self.in_flight += 1
            try:
                r = await client.request(method, self.url + path, json=body, timeout=5)
            except httpx.HTTPError:
                r = None
            finally:
                self.in_flight -= 1
            if r is not None and r.status_code < 500:
                return r
            self.retries += 1
            await asyncio.sleep(0.05 + 0.01 * min(attempt, 20))
        self.gave_up += 1
        return None

    def ack(self, kind: str, key: str) -> None:
        self.acks.append(Ack(kind, key, time.time()))

    async def stock(self) -> None:
        async with httpx.AsyncClient() as c:
            for s in PLAIN:
                await self.call(c, "PUT", f"/v1/items/{s}", {"per_customer_limit": 6})
                await self.call(c, "PUT", f"/v1/stock/{s}/default", {"on_hand": 400})
            for s in HOT:
                await self.call(c, "PUT", f"/v1/stock/{s}/default", {"on_hand": 30})

    async def shopper(self, me: int) -> None:
        rnd = random.Random(self.rnd.random())
        async with httpx.AsyncClient() as c:
            while not self.stopped:
                await self.running.wait()
                self.seq += 1
                n = self.seq
                rid, cust = f"r{n}", f"c{rnd.randrange(300)}"
                if me == 0 and n % 10 == 0:  # the stock room: hot skus come back in
                    ref = f"adj{n}"
                    r = await self.call(c, "POST", f"/v1/stock/{rnd.choice(HOT)}/default/adjustments",
                                        {"delta": 5, "reason": "received", "adjustment_id": ref})  # fmt: skip
                    if r is not None and r.status_code == 200:
                        self.ack("adjusted", ref)
                    continue
                sku = rnd.choice(HOT if rnd.random() < 0.3 else PLAIN)
                ttl = rnd.choice([1, 2, 60, 60, 60])
                r = await self.call(c, "POST", "/v1/reservations", {"reservation_id": rid, "customer_id": cust,
                                    "ttl_seconds": ttl, "items": [{"sku": sku, "quantity": rnd.randint(1, 2)}]})  # fmt: skip
                if r is None or r.status_code not in (200, 201):
                    self.refused[str(r.status_code) if r is not None else "none"] += 1
                    continue
                self.ack("reserved", rid)
                roll = rnd.random()
                if roll < 0.2:
                    r = await self.call(c, "DELETE", f"/v1/reservations/{rid}")
                    if r is not None and r.status_code == 200:
                        self.ack(r.json()["status"], rid)  # released, or expired first
                elif roll < 0.7:
                    oid = f"o{n}"
                    r = await self.call(
                        c, "POST", f"/v1/reservations/{rid}/commit", {"order_id": oid}
                    )
                    if r is None or r.status_code != 200:
                        continue
                    self.ack("committed", oid)
                    if rnd.random() < 0.6:
                        ref = f"f{n}"
                        r = await self.call(
                            c, "POST", f"/v1/orders/{oid}/fulfill", {"fulfillment_id": ref}
                        )
                        if r is not None and r.status_code == 200:
                            self.ack("fulfilled", ref)
                    elif rnd.random() < 0.5:
                        r = await self.call(c, "POST", f"/v1/orders/{oid}/cancel")
                        if r is not None and r.status_code == 200:
                            self.ack("cancelled", oid)

    async def pause(self) -> None:
        """Stop starting requests and wait for those in flight to be answered."""
        self.running.clear()
        while self.in_flight:
            await asyncio.sleep(0.01)

    def resume(self) -> None:
        self.running.set()


# --- the checks of SPEC §2 -------------------------------------------------------------------

EVENT_KEY = {"reserved": "reservation_id", "released": "reservation_id", "expired": "reservation_id",
             "committed": "order_id", "cancelled": "order_id", "fulfilled": "ref", "adjusted": "ref"}  # fmt: skip


def ledger_rows(db: Any) -> Counter[tuple[str, str]]:
    """How many ledger rows each (event type, id) has."""
    out: Counter[tuple[str, str]] = Counter()
    with db.connect() as conn:
        for kind, col in EVENT_KEY.items():
            q = text(f"SELECT {col}, count(*) FROM ledger_events WHERE type = :t GROUP BY {col}")
            for key, n in conn.execute(q, {"t": kind}):
                out[(kind, key)] = int(n)
    return out


def oversold(db: Any, client: redis.Redis, prefix: str) -> int:
    """Units sold below zero: in any ledger movement of a reserve or commit, and in Redis now."""
    with db.connect() as conn:
        q = text(
            "SELECT coalesce(sum(-(m.on_hand - m.reserved - m.committed - m.safety)), 0)"
            " FROM ledger_movements m JOIN ledger_events e ON e.id = m.event_id"
            " WHERE e.type IN ('reserved', 'committed') AND m.on_hand - m.reserved - m.committed - m.safety < 0"
        )
        units = int(conn.execute(q).scalar_one())
    for sku in HOT + PLAIN:
        v = client.hmget(
            f"{prefix}:{{p0}}:lv:{sku}:default", "on_hand", "reserved", "committed", "safety"
        )
        if v[0] is not None:
            units += max(0, -(int(v[0]) - sum(int(x or 0) for x in v[1:])))
    return units


def copy_aof(src: Path, dst: Path) -> None:
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src / "appendonlydir", dst)


def restore_aof(snapshot: Path, redis_dir: Path) -> None:
    shutil.rmtree(redis_dir / "appendonlydir")
    shutil.copytree(snapshot, redis_dir / "appendonlydir")


def ledger_last(stack: Stack) -> tuple[int, int]:
    """The newest stream id the ledger holds."""
    from flashstock.db import make_engine

    db = make_engine(stack.pg_url)
    try:
        with db.connect() as conn:
            row = conn.execute(text(
                "SELECT stream_ms, stream_seq FROM ledger_events WHERE partition = 0"
                " ORDER BY stream_ms DESC, stream_seq DESC LIMIT 1"
            )).first()  # fmt: skip
    finally:
        db.dispose()
    return (int(row[0]), int(row[1])) if row else (0, 0)


def ledger_story(stack: Stack, reservation_id: str) -> str:
    """A reservation as the ledger has it: its row and its events, for a failure message."""
    from flashstock.db import make_engine

    db = make_engine(stack.pg_url)
    try:
        with db.connect() as conn:
            row = conn.execute(
                text("SELECT status, expires_at, order_id FROM reservations WHERE id = :r"),
                {"r": reservation_id},
            ).first()
            events = conn.execute(
                text(
                    "SELECT stream_ms, stream_seq, type, payload->>'exp' FROM ledger_events"
                    " WHERE reservation_id = :r ORDER BY stream_ms, stream_seq"
                ),
                {"r": reservation_id},
            ).all()
    finally:
        db.dispose()
    return f"row {tuple(row) if row else None}, events {[tuple(e) for e in events]}"
