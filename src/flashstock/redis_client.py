"""Redis clients as every flashstock process makes them: hiredis, timeouts, retries, a name."""

from __future__ import annotations

import os
import socket
from typing import Any

import redis
import redis.asyncio as aredis
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError, TimeoutError

FAKE_URL = "fakeredis://"  # the in-process fallback of the embedded default
_fake_server: Any = None


def client_name(role: str) -> str:
    return f"flashstock-{role}-{socket.gethostname()}-{os.getpid()}"


def _options(role: str, max_connections: int) -> dict[str, Any]:
    return {
        "client_name": client_name(role),
        "socket_timeout": 5,
        "socket_connect_timeout": 2,
        "health_check_interval": 30,
        "retry_on_error": [ConnectionError, TimeoutError],
        "max_connections": max_connections,
    }


def _fake(module: Any) -> Any:
    import fakeredis

    global _fake_server
    if _fake_server is None:
        _fake_server = fakeredis.FakeServer()
    cls = fakeredis.FakeAsyncRedis if module is aredis else fakeredis.FakeRedis
    return cls(server=_fake_server)


def create_async(url: str, role: str, max_connections: int = 128) -> aredis.Redis:
    if url == FAKE_URL:
        return _fake(aredis)  # type: ignore[no-any-return]
    from redis.asyncio.retry import Retry

    return aredis.Redis.from_url(
        url, retry=Retry(ExponentialBackoff(cap=1.0), 3), **_options(role, max_connections)
    )


def create_sync(url: str, role: str, max_connections: int = 16) -> redis.Redis:
    if url == FAKE_URL:
        return _fake(redis)  # type: ignore[no-any-return]
    from redis.retry import Retry

    return redis.Redis.from_url(
        url, retry=Retry(ExponentialBackoff(cap=1.0), 3), **_options(role, max_connections)
    )


def redact(url: str | None) -> str:
    """A URL fit for logs: the password replaced by ``***``."""
    if not url or "@" not in url or "://" not in url:
        return url or ""
    scheme, rest = url.split("://", 1)
    creds, host = rest.rsplit("@", 1)
    user = creds.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}" if ":" in creds else url
