"""`GET /v1/models` in OpenAI's list shape."""

import time

from fastapi import APIRouter, Request

from server.state import server_state

router = APIRouter()

_STARTED = int(time.time())


@router.get("/v1/models")
async def list_models(request: Request) -> dict:
    state = server_state(request)
    entry = {"id": state.model_name, "object": "model", "created": _STARTED, "owned_by": "rpserve"}
    if state.engine is not None:
        entry["max_model_len"] = state.engine.model.context_length
    return {"object": "list", "data": [entry]}
