"""``flashstock serve`` as operators run it: several worker processes behind one port."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx2 as httpx
import pytest
from support import REDIS_URL, need_redis, unique_prefix

pytestmark = [pytest.mark.redis, pytest.mark.slow]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def served(tmp_path: Path):  # type: ignore[no-untyped-def]
    need_redis()
    port = _free_port()
    env = dict(os.environ, FLASHSTOCK_REDIS_URL=REDIS_URL, FLASHSTOCK_KEY_PREFIX=unique_prefix(),
               FLASHSTOCK_DATABASE_URL=f"sqlite:///{tmp_path / 'ledger.db'}")  # fmt: skip
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    env["TMPDIR"] = str(tmp := tmp_path / "tmp")
    tmp.mkdir()
    subprocess.run([sys.executable, "-m", "flashstock.cli", "db", "upgrade"], env=env, check=True,
                   capture_output=True)  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, "-m", "flashstock.cli", "serve", "--workers", "2", "--port", str(port)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(f"{base}/readyz").status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert proc.poll() is None and time.monotonic() < deadline, "serve did not start"
        time.sleep(0.1)
    assert [p.name[:19] for p in tmp.iterdir()] == ["flashstock-metrics-"]
    yield base
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=15)
    assert list(tmp.iterdir()) == [], "serve left its metrics directory behind"


def _served_count(text: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith("flashstock_http_requests_total{") and 'route="/healthz"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_metrics_count_every_worker_process(served: str) -> None:
    with httpx.Client(base_url=served) as client:
        for _ in range(40):
            assert client.get("/healthz").status_code == 200
        seen = {_served_count(client.get("/metrics").text) for _ in range(6)}
    assert seen == {40.0}  # whichever worker answers the scrape, it reports all of them
