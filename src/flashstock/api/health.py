from __future__ import annotations

import asyncio
import os

from fastapi import APIRouter
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest, multiprocess
from sqlalchemy import text

from flashstock.api.deps import StateDep, json_response
from flashstock.db.refusals import refusal

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


def _db_problem(exc: BaseException) -> str:
    found = refusal(exc)
    return found.meaning if found else f"unreachable: {type(exc).__name__}"


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
