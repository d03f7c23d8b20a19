"""The benchmark suite measures what it says: the PostgreSQL approaches it compares with are
correct code, and one short run writes the JSON, the plot and the table."""

from __future__ import annotations

import asyncio
import json

import pytest
from support import need_redis

from flashstock.bench import pgalt
from flashstock.bench.load import run_python
from flashstock.bench.runner import run


@pytest.mark.postgres
@pytest.mark.parametrize("approach", pgalt.APPROACHES)
async def test_postgres_approaches_never_oversell(pg_url: str, approach: str) -> None:
    pgalt.setup(pg_url, "HOT", 20)
    pg = pgalt.Approaches(pg_url, pool_size=8)
    got = await asyncio.gather(*(pg.reserve(approach, "HOT", 1) for _ in range(60)))
    ok = sum(status == 201 for status, _ in got)
    st = pgalt.state(pg_url, "HOT")
    assert st["reserved"] == st["held_units"] == ok <= 20
    if approach != "optimistic":  # the others wait for the lock: all 20 units go
        assert ok == 20
    refused = [body["lines"][0] for status, body in got if status == 409]
    assert len(refused) == 60 - ok
    if approach != "optimistic":
        assert all(line["available"] < line["requested"] for line in refused)


@pytest.mark.slow
@pytest.mark.redis
def test_a_short_run_writes_json_plot_and_table(tmp_path) -> None:  # type: ignore[no-untyped-def]
    need_redis()
    out = tmp_path / "bench"
    result = run(out, sections=("http", "sold_out"), duration=1, rounds=1, workers=1,
                 connections=8, generator="python", echo=lambda _: None)  # fmt: skip
    saved = json.loads((out / "results.json").read_text())
    http = saved["results"]["http"]
    assert http["reserve"]["rounds"][0]["status"].keys() == {"201"}
    assert http["reserve"]["rps"] > 0 and http["bare"]["rps"] > 0
    assert saved["results"]["sold_out"]["refusals_per_s"] > 0
    assert (out / "table.md").read_text().startswith("Run ")
    assert any(g["goal"].startswith("reserve vs bare") for g in result["goals"])
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return
    assert (out / "plot.png").stat().st_size > 0


def test_the_python_generator_counts_answers() -> None:
    """The fallback generator against a tiny server: every request counted, by status."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    from threading import Thread

    class H(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:  # noqa: N802
            self.rfile.read(int(self.headers["content-length"]))
            body = b'{"error":"insufficient_stock","lines":[{"requested":2,"available":5}]}'
            self.send_response(409)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
    Thread(target=srv.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{srv.server_address[1]}"
        res = run_python(url, "/x", "{}", connections=2, duration=0.5, check=True)
    finally:
        srv.shutdown()
    assert res.requests > 0 and res.status == {"409": res.requests}
    assert res.spurious == res.requests  # available 5 covered the 2 requested
