"""`GET /health`: 503 while the model loads, 200 with the engine's counters once it serves, 503 with
`engine_restarting` while a dead engine process is replaced, `engine_stopped` once it will not be. `memory` is
the memory plan (server/engine/memory_plan.py)."""

from dataclasses import asdict

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from server.state import server_state

router = APIRouter()


@router.get("/health")
async def health(request: Request) -> JSONResponse:
    state = server_state(request)
    engine = state.engine
    if engine is None:
        return JSONResponse({"status": "loading", "model": state.model_name}, status_code=503)
    if engine.status != "ok":
        return JSONResponse({"status": f"engine_{engine.status}", "model": state.model_name}, status_code=503)
    memory = asdict(engine.memory_plan)
    return JSONResponse({"status": "ok", "model": state.model_name, **asdict(engine.stats), "memory": memory})
