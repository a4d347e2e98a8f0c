"""What model is served, in every client's shape: OpenAI's `/v1/models`, text-generation-webui's
`/v1/internal/model/info`, TabbyAPI's `/v1/model` and `/v1/model/list`, llama.cpp's `/props`."""

import time

from fastapi import APIRouter, Request

from server.state import ServerState, ready_engine, server_state

router = APIRouter()

_STARTED = int(time.time())


def _card(state: ServerState) -> dict:
    entry = {"id": state.model_name, "object": "model", "created": _STARTED, "owned_by": "rpserve"}
    if state.engine is not None:
        entry["max_model_len"] = state.engine.context_length
    return entry


@router.get("/v1/models")
async def list_models(request: Request) -> dict:
    return {"object": "list", "data": [_card(server_state(request))]}


@router.get("/v1/model/list")
async def tabby_model_list(request: Request) -> dict:
    return {"object": "list", "data": [_card(server_state(request))]}


@router.get("/v1/model")
async def tabby_current_model(request: Request) -> dict:
    state = server_state(request)
    context = ready_engine(request).context_length
    return {**_card(state), "parameters": {"max_seq_len": context}}


@router.get("/v1/internal/model/info")
async def webui_model_info(request: Request) -> dict:
    state = server_state(request)
    adapters = [state.settings.adapter] if state.settings.adapter else []
    return {"model_name": state.model_name, "lora_names": adapters}


@router.get("/props")
async def llamacpp_props(request: Request) -> dict:
    state = server_state(request)
    context = ready_engine(request).context_length
    return {
        "default_generation_settings": {"n_ctx": context, "model": state.model_name},
        "total_slots": state.settings.max_running,
        "model_path": state.model_name,
        "n_ctx": context,
    }
