"""Redis clients as every flashstock process makes them: hiredis, timeouts, retries, a name."""

from __future__ import annotations

import asyncio
import os
import re
import socket
import time
from collections import deque
from typing import Any

import hiredis
import redis
import redis.asyncio as aredis
from redis._parsers.base import BaseParser
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.connection import parse_url
from redis.exceptions import ConnectionError, TimeoutError

FAKE_URL = "fakeredis://"  # the in-process fallback of the embedded default
_fake_server: Any = None


def client_name(role: str) -> str:
    return f"flashstock-{role}-{socket.gethostname()}-{os.getpid()}"


def _options(role: str, max_connections: int, timeout: float) -> dict[str, Any]:
    return {
        "client_name": client_name(role),
        "socket_timeout": timeout,
        "socket_connect_timeout": 2,
        "health_check_interval": 30,
        "max_connections": max_connections,
    }


def _fake(module: Any) -> Any:
    import fakeredis

    global _fake_server
    if _fake_server is None:
        _fake_server = fakeredis.FakeServer()
    cls = fakeredis.FakeAsyncRedis if module is aredis else fakeredis.FakeRedis
    return cls(server=_fake_server)


def create_async(
    url: str, role: str, max_connections: int = 128, *, timeout: float = 5.0
) -> aredis.Redis:
    """The client the API and the engine use.

    It never retries a command by itself: a script whose reply was lost to a
    timeout or a dropped connection may well have run, and running it again
    could apply a change twice. The caller gets the error (the API answers
    503) and retries with its idempotency id.
    """
    if url == FAKE_URL:
        return _fake(aredis)  # type: ignore[no-any-return]
    parse(url)
    from redis.asyncio.retry import Retry

    return aredis.Redis.from_url(
        url, retry=Retry(NoBackoff(), 0), **_options(role, max_connections, timeout)
    )


def create_sync(
    url: str, role: str, max_connections: int = 16, *, timeout: float = 5.0
) -> redis.Redis:
    """The client of the worker, the sweeper and the CLI, whose calls are all safe to repeat
    (stream reads and acks, sweeps, reads), so it retries on connection errors."""
    if url == FAKE_URL:
        return _fake(redis)  # type: ignore[no-any-return]
    parse(url)
    from redis.retry import Retry

    return redis.Redis.from_url(
        url,
        retry=Retry(ExponentialBackoff(cap=1.0), 3),
        retry_on_error=[ConnectionError, TimeoutError],
        **_options(role, max_connections, timeout),
    )


def redact(url: str | None) -> str:
    """A URL fit for logs: the password (in the authority or a ``password=`` query) as ``***``,
    also in a URL mistyped without its ``://``."""
    if not url:
        return ""
    url = _QUERY_PASSWORD.sub(r"\1***", url)
    if "@" not in url:
        return url
    scheme, sep, rest = url.partition("://") if "://" in url else ("", "", url)
    creds, host = rest.rsplit("@", 1)
    user = creds.split(":", 1)[0]
    return f"{scheme}{sep}{user}:***@{host}" if ":" in creds else url


_QUERY_PASSWORD = re.compile(r"([?&]password=)[^&#]*", re.I)


class URLError(ValueError):
    """A Redis or database URL its parser cannot read, shown redacted.

    The parsers' own errors may quote a piece of the password: one holding an unencoded
    ``/``, ``#`` or ``?`` makes redis-py read the piece before it as the port, and an ``@``
    makes libpq look up the piece after it as the host.
    """

    def __init__(self, what: str, url: str, why: str | None = None) -> None:
        super().__init__(
            f"cannot use the {what} URL {redact(url)}: {why}"
            if why
            else f"cannot parse the {what} URL {redact(url)}: percent-encode any of "
            "@ : / ? # [ ] % in its user name or password (%40 %3A %2F %3F %23 %5B %5D %25)"
        )


def parse(url: str) -> dict[str, Any]:
    """redis-py's reading of a Redis URL; URLError (password masked) when it cannot read it."""
    try:
        return parse_url(url)
    except ValueError:
        if not url.startswith(("redis://", "rediss://", "unix://")):
            raise  # redis-py names the schemes it takes, nothing of the URL
        raise URLError("Redis", url) from None


class _Pipe(asyncio.Protocol):
    """One connection carrying many commands at once; Redis answers them in order.

    Commands sent in the same turn of the event loop leave in one write, so under
    load many requests share a system call and a packet.
    """

    def __init__(self) -> None:
        self.reader = hiredis.Reader()
        self.waiters: deque[tuple[asyncio.Future[Any], float]] = deque()
        self.transport: asyncio.Transport | None = None
        self.lost: Exception | None = None
        self._out: list[bytes] = []
        self._loop = asyncio.get_running_loop()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        try:
            while (reply := self.reader.gets()) is not False:
                fut = self.waiters.popleft()[0]
                if fut.done():  # the caller went away; its reply is dropped
                    continue
                if isinstance(reply, hiredis.ReplyError):
                    fut.set_exception(BaseParser.parse_error(str(reply)))
                else:
                    fut.set_result(reply)
        except hiredis.ProtocolError:
            assert self.transport is not None
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = ConnectionError(f"multiplexed connection lost: {exc or 'closed'}")
        while self.waiters:
            fut = self.waiters.popleft()[0]
            if not fut.done():
                fut.set_exception(self.lost)

    def call(self, packed: bytes) -> asyncio.Future[Any]:
        if self.lost is not None:
            raise self.lost
        fut = self._loop.create_future()
        self.waiters.append((fut, time.monotonic()))
        if not self._out:
            self._loop.call_soon(self._flush)
        self._out.append(packed)
        return fut

    def _flush(self) -> None:
        out, self._out = self._out, []
        if self.transport is not None and self.lost is None:
            self.transport.write(b"".join(out))

    def stalled(self, timeout: float) -> bool:
        return bool(self.waiters) and time.monotonic() - self.waiters[0][1] > timeout


class Multiplexed:
    """A redis-py async client whose script calls share one pipelined connection.

    ``evalsha`` and ``eval`` (every engine call) go out on a connection of their
    own with as many calls in flight as there are callers, instead of taking a
    pooled connection per call: no pool checkout, no per-call health check,
    replies parsed by hiredis straight into the caller's future. Everything
    else is the wrapped client's. When the connection is lost or stalls past
    ``timeout``, the calls it carried fail with ``ConnectionError`` and are
    never sent again: each may have run.
    """

    def __init__(self, client: aredis.Redis, url: str, role: str, timeout: float = 5.0) -> None:
        self._client = client
        self._where = parse(url)
        self._name = client_name(role) + "-mux"
        self._timeout = timeout
        self._pipe: _Pipe | None = None
        self._connecting: asyncio.Future[_Pipe] | None = None
        self._watchdog: asyncio.TimerHandle | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    async def evalsha(self, *args: Any) -> Any:
        return await self._call(("EVALSHA", *args))

    async def eval(self, *args: Any) -> Any:
        return await self._call(("EVAL", *args))

    async def connection_id(self) -> int:
        """The Redis client id of the multiplexed connection (for tests and operators)."""
        return int(await self._call(("CLIENT", "ID")))

    async def _call(self, cmd: tuple[Any, ...]) -> Any:
        # A call is handed to the wrapped client only when it was certainly never sent. Once
        # sent, a lost or stalled connection is the caller's error: the script may have run,
        # and sending it again could apply a change twice.
        packed = hiredis.pack_command(cmd)
        try:
            pipe = self._pipe
            if pipe is None or pipe.lost is not None:
                pipe = await self._connect()
            fut = pipe.call(packed)
        except (ConnectionError, OSError):
            return await self._client.execute_command(*cmd)
        return await fut

    async def _connect(self) -> _Pipe:
        if self._connecting is None or self._connecting.done():
            self._connecting = asyncio.ensure_future(self._open())
        return await asyncio.shield(self._connecting)

    async def _open(self) -> _Pipe:
        loop = asyncio.get_running_loop()
        w = self._where
        if "path" in w:
            _, pipe = await loop.create_unix_connection(_Pipe, w["path"])
        else:
            _, pipe = await asyncio.wait_for(
                loop.create_connection(_Pipe, w.get("host", "localhost"), w.get("port", 6379)), 2
            )
        hello: list[tuple[Any, ...]] = []
        if w.get("password"):
            hello.append(("AUTH", *([w["username"]] if w.get("username") else []), w["password"]))
        if w.get("db"):
            hello.append(("SELECT", w["db"]))
        hello.append(("CLIENT", "SETNAME", self._name))
        try:
            for cmd in hello:
                await asyncio.wait_for(pipe.call(hiredis.pack_command(cmd)), self._timeout)
        except BaseException:
            # AUTH refused (a wrong password), or no answer: close it, or every call that
            # comes to open a connection would leave one more behind.
            if pipe.transport is not None:
                pipe.transport.abort()
            raise
        self._pipe = pipe
        if self._watchdog is None:
            self._watchdog = loop.call_later(1, self._watch)
        return pipe

    def _watch(self) -> None:
        pipe = self._pipe
        if pipe is not None and pipe.transport is not None and pipe.stalled(self._timeout):
            pipe.transport.abort()  # its callers go again through the wrapped client
        self._watchdog = asyncio.get_running_loop().call_later(1, self._watch)

    async def aclose(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        if self._pipe is not None and self._pipe.transport is not None:
            self._pipe.transport.close()
        self._pipe = None
        await self._client.aclose()


def multiplexed(client: Any, url: str, role: str, timeout: float = 5.0) -> Any:
    """``client`` with its script calls multiplexed (plain ``redis://`` and ``unix://`` URLs);
    other clients (fakeredis, TLS) are returned as they are."""
    if not isinstance(client, aredis.Redis) or not url.startswith(("redis://", "unix://")):
        return client
    return Multiplexed(client, url, role, timeout)
