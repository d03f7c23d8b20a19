"""Readiness and outages: /readyz says 503 while Redis or PostgreSQL is away, requests answer
503 at once instead of hanging or failing with 500, and everything comes back by itself.
(SIGTERM draining the worker's batch in flight: tests/test_worker.py.)"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest
from harness import Stack

pytestmark = [pytest.mark.slow, pytest.mark.redis, pytest.mark.postgres]

BODY = {"items": [{"sku": "A", "quantity": 1}]}


def wait_status(url: str, status: int, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=5).status_code == status:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"{url} never answered {status}")


def test_outages_answer_503_quickly_and_recover(
    tmp_path: Path, pg_url: str, forwarder: Any
) -> None:
    stack = Stack(tmp_path, pg_url, forwarder)
    stack.api_db = stack.worker_db  # the API reaches PostgreSQL through the relay too
    stack.start()
    try:
        assert httpx.put(f"{stack.url}/v1/stock/A/default", json={"on_hand": 50}).status_code == 200
        assert httpx.get(f"{stack.url}/readyz").status_code == 200

        stack.redis.kill()  # Redis down
        t0 = time.monotonic()
        r = httpx.post(f"{stack.url}/v1/reservations", json=BODY, timeout=10)
        took = time.monotonic() - t0
        assert r.status_code == 503 and r.json()["error"] == "unavailable", r.text
        assert took < 2.0, took
        ready = httpx.get(f"{stack.url}/readyz", timeout=10)
        assert ready.status_code == 503 and ready.json()["redis"] != "ok"
        stack.redis.start()  # back: nothing restarted by hand
        wait_status(f"{stack.url}/readyz", 200)
        assert httpx.post(f"{stack.url}/v1/reservations", json=BODY).status_code == 201

        stack.close_relay()  # PostgreSQL unreachable: not ready, but sales go on into the stream
        ready = httpx.get(f"{stack.url}/readyz", timeout=10)
        assert ready.status_code == 503 and ready.json()["database"] != "ok"
        assert httpx.post(f"{stack.url}/v1/reservations", json=BODY).status_code == 201
        stack.open_relay()
        wait_status(f"{stack.url}/readyz", 200)
    finally:
        stack.stop()
