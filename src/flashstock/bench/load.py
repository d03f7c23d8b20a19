"""Load generators: ``wrk`` with a Lua body script, or a tight asyncio client when wrk is missing.

Both keep ``connections`` HTTP/1.1 keep-alive connections busy for
``duration`` seconds, one request in flight per connection, and report the
same :class:`LoadResult`. wrk (C, one thread here) costs the machine far less
per request than any Python client, which matters on two cores where the
generator competes with the server; its own CPU time is measured and
reported so a reader can see it was not the bottleneck.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import shutil
import subprocess
import time
from dataclasses import asdict, dataclass, field
from importlib import resources
from typing import Any
from urllib.parse import urlsplit


@dataclass
class LoadResult:
    generator: str
    connections: int
    duration_s: float
    requests: int
    status: dict[str, int]
    spurious: int
    errors: int
    latency_ms: dict[str, float]
    generator_cpu_s: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def rps(self) -> float:
        return self.requests / self.duration_s if self.duration_s else 0.0

    def count(self, *codes: int) -> int:
        return sum(self.status.get(str(c), 0) for c in codes)

    def per_s(self, *codes: int) -> float:
        return self.count(*codes) / self.duration_s if self.duration_s else 0.0

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["rps"] = round(self.rps, 1)
        return d


def have_wrk() -> bool:
    return shutil.which("wrk") is not None


def _script() -> str:
    return str(resources.files("flashstock.bench").joinpath("wrk", "post.lua"))


def run_wrk(
    url: str, path: str, body: str, *, connections: int, duration: float, skus: int = 0,
    threads: int = 1, check: bool = False,
) -> LoadResult:  # fmt: skip
    """POST ``body`` to ``url + path`` from wrk; ``{sku}`` in the body is a random SKU-n;
    ``check``: read every 409 for spurious refusals (costs the generator CPU)."""
    cmd = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{max(1, round(duration))}s", "--timeout", "10s",
           "--latency", "-s", _script(), url, "--", path, body, str(skus),
           "1" if check else "0"]  # fmt: skip
    before = os.times()
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60)
    after = os.times()
    m = re.search(r"^WRKJSON (.*)$", out.stdout, re.M)
    if m is None:
        raise RuntimeError(f"wrk failed: {out.stdout[-2000:]} {out.stderr[-2000:]}")
    d = json.loads(m.group(1))
    lat = d["latency_us"]
    e = d["errors"]
    return LoadResult(
        generator="wrk",
        connections=connections,
        duration_s=d["duration_us"] / 1e6,
        requests=d["requests"],
        status={str(k): v for k, v in d["status"].items()},
        spurious=d["spurious"],
        errors=e["connect"] + e["read"] + e["write"] + e["timeout"],
        latency_ms={k: round(lat[k] / 1000, 3) for k in ("p50", "p90", "p99", "max", "mean")},
        generator_cpu_s=round(
            (after.children_user - before.children_user)
            + (after.children_system - before.children_system),
            3,
        ),
    )


def run_python(
    url: str, path: str, body: str, *, connections: int, duration: float, skus: int = 0,
    check: bool = False,
) -> LoadResult:  # fmt: skip
    """The same load from asyncio raw sockets (uvloop when installed): slower than wrk."""
    try:
        import uvloop

        runner: Any = uvloop.run
    except ImportError:  # pragma: no cover - uvloop comes with uvicorn[standard]
        runner = asyncio.run
    start_cpu = time.process_time()
    res = runner(_py_load(url, path, body, connections, duration, skus, check))
    res.generator_cpu_s = round(time.process_time() - start_cpu, 3)
    return res


def _spurious(body: bytes) -> bool:
    try:
        lines = json.loads(body).get("lines") or []
    except ValueError:
        return False
    return any(
        isinstance(x.get("available"), int) and x["available"] >= x.get("requested", 1 << 62)
        for x in lines
    )


async def _py_load(
    url: str, path: str, body: str, connections: int, duration: float, skus: int, check: bool
) -> LoadResult:
    u = urlsplit(url)
    host, port = u.hostname or "127.0.0.1", u.port or 80
    status: dict[str, int] = {}
    lat: list[float] = []
    spurious = errors = 0
    deadline = time.perf_counter() + duration

    def request() -> bytes:
        b = body.replace("{sku}", f"SKU-{random.randint(1, skus)}") if skus else body
        raw = b.encode()
        return (
            f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(raw)}\r\n\r\n"
        ).encode() + raw

    async def one() -> None:
        nonlocal spurious, errors
        reader, writer = await asyncio.open_connection(host, port)
        try:
            while time.perf_counter() < deadline:
                t0 = time.perf_counter()
                writer.write(request())
                head = await reader.readuntil(b"\r\n\r\n")
                code = head[9:12].decode()
                m = re.search(rb"(?i)content-length: *(\d+)", head)
                payload = await reader.readexactly(int(m.group(1))) if m else b""
                lat.append(time.perf_counter() - t0)
                status[code] = status.get(code, 0) + 1
                if code == "409" and check and _spurious(payload):
                    spurious += 1
        except (OSError, asyncio.IncompleteReadError):
            errors += 1
        finally:
            writer.close()

    t_start = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(connections)))
    elapsed = time.perf_counter() - t_start
    lat.sort()

    def pct(p: float) -> float:
        return round(lat[min(len(lat) - 1, int(p / 100 * len(lat)))] * 1000, 3) if lat else 0.0

    return LoadResult(
        generator="python",
        connections=connections,
        duration_s=elapsed,
        requests=len(lat),
        status=status,
        spurious=spurious,
        errors=errors,
        latency_ms={
            "p50": pct(50), "p90": pct(90), "p99": pct(99), "max": pct(100),
            "mean": round(sum(lat) / len(lat) * 1000, 3) if lat else 0.0,
        },
    )  # fmt: skip


def run_load(
    url: str, path: str, body: str, *, connections: int, duration: float, skus: int = 0,
    generator: str = "auto", check: bool = False,
) -> LoadResult:  # fmt: skip
    """wrk when installed (or asked for), else the asyncio client."""
    if generator == "wrk" or (generator == "auto" and have_wrk()):
        return run_wrk(
            url, path, body, connections=connections, duration=duration, skus=skus, check=check
        )
    return run_python(
        url, path, body, connections=connections, duration=duration, skus=skus, check=check
    )
