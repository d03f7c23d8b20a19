"""The app's shared state and the dependency that hands routes the engine."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

import orjson
from fastapi import Depends, Request
from fastapi.responses import Response

from flashstock.engine import Engine, Reply
from flashstock.settings import Settings


@dataclass
class State:
    settings: Settings
    engine: Engine
    redis: Any
    db: Any  # SQLAlchemy engine, for readiness


# Async on purpose: FastAPI runs a plain ``def`` dependency in a worker thread, a thread
# hand-off per request for an attribute read.
async def get_state(request: Request) -> State:
    return request.app.state.flashstock  # type: ignore[no-any-return]


async def get_engine(request: Request) -> Engine:
    return request.app.state.flashstock.engine  # type: ignore[no-any-return]


EngineDep = Annotated[Engine, Depends(get_engine)]
StateDep = Annotated[State, Depends(get_state)]


def reply(r: Reply, created: int = 200) -> Response:
    """The script's JSON as it came; ``created`` is the status for a first (non-replay) answer."""
    return Response(r.raw, status_code=created if r.created else 200, media_type="application/json")


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(
        orjson.dumps(data), status_code=status, media_type="application/json", headers=headers
    )
