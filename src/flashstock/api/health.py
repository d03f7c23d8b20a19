from __future__ import annotations

import asyncio
import os
import re

from fastapi import APIRouter
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest, multiprocess
from sqlalchemy import text

from flashstock.api.deps import StateDep, json_response

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


# What a PostgreSQL refusal means, said without the server's own text, which names hosts,
# users and databases. A refused connection has no SQLSTATE in psycopg: its text is matched.
_REFUSALS = (
    ("3D000", r'FATAL: +database ".*" does not exist', "the database does not exist (createdb, then flashstock db upgrade)"),
    ("28P01", r"FATAL: +password authentication failed", "the password was refused"),
    ("28000", r'FATAL: +(no pg_hba\.conf entry|role ".*" does not exist)', "the server refused this user"),
    ("57P03", r"FATAL: +the database system is (starting up|shutting down)", "the server is starting up or shutting down"),
    ("53300", r"FATAL: +(sorry, )?too many clients", "the server has too many connections"),
)  # fmt: skip


def _db_problem(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None)
    state, text = getattr(orig, "sqlstate", None), str(orig or "")
    for code, pattern, meaning in _REFUSALS:
        if state == code or (state is None and re.search(pattern, text)):
            return meaning
    return f"unreachable: {type(exc).__name__}"


def _db_ping(db: object) -> None:
    with db.connect() as conn:  # type: ignore[attr-defined]
        conn.execute(text("SELECT 1"))


@router.get("/readyz")
async def readyz(state: StateDep) -> Response:
    """Redis and the ledger database are reachable."""
    checks: dict[str, str] = {}
    try:
        await asyncio.wait_for(state.redis.ping(), 2)
        checks["redis"] = "ok"
    except Exception as exc:  # noqa: BLE001 - any failure means not ready
        checks["redis"] = f"unreachable: {type(exc).__name__}"
    try:
        await asyncio.wait_for(asyncio.to_thread(_db_ping, state.db), 3)
        checks["database"] = "ok"
    except Exception as exc:  # noqa: BLE001
        checks["database"] = _db_problem(exc)
    ok = all(v == "ok" for v in checks.values())
    return json_response({"ready": ok, **checks}, 200 if ok else 503)


@router.get("/metrics")
async def metrics() -> Response:
    """Prometheus metrics (of every worker process when served by several)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
