"""What the routes share: the settings and, once loaded, the engine."""

from dataclasses import dataclass

from fastapi import Request

from sampling import SamplingParams
from server.engine.engine import Engine
from server.errors import APIError
from server.settings import Settings


@dataclass
class ServerState:
    settings: Settings
    model_name: str
    sampling_defaults: SamplingParams
    engine: Engine | None = None
    draining: bool = False  # SIGTERM came: new requests get 503 while running ones finish


def server_state(request: Request) -> ServerState:
    return request.app.state.server


def ready_engine(request: Request) -> Engine:
    engine = server_state(request).engine
    if engine is None:
        raise APIError(503, "The model is still loading; try again in a few seconds.", code="model_not_ready")
    return engine
