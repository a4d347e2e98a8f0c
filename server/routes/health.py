"""`GET /health`: 503 while the model loads, 200 with the engine's counters once it serves, 503 again if the
engine process has stopped."""

from dataclasses import asdict

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from server.state import server_state

router = APIRouter()


@router.get("/health")
async def health(request: Request) -> JSONResponse:
    state = server_state(request)
    if state.engine is None:
        return JSONResponse({"status": "loading", "model": state.model_name}, status_code=503)
    if not state.engine.alive:
        return JSONResponse({"status": "engine_stopped", "model": state.model_name}, status_code=503)
    return JSONResponse({"status": "ok", "model": state.model_name, **asdict(state.engine.stats)})
