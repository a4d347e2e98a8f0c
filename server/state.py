"""What the routes share: the settings and, once loaded, the engine."""

from dataclasses import dataclass, field

from fastapi import Request

from server.engine.engine_process import EngineProcess
from server.errors import APIError
from server.sampling_preset import SamplingPreset
from server.serving.client_generations import ClientGenerations
from server.settings import Settings


@dataclass
class ServerState:
    settings: Settings
    model_name: str
    sampling_preset: SamplingPreset
    engine: EngineProcess | None = None
    draining: bool = False  # SIGTERM came: new requests get 503 while running ones finish
    client_generations: ClientGenerations = field(default_factory=ClientGenerations)


def server_state(request: Request) -> ServerState:
    return request.app.state.server


def ready_engine(request: Request) -> EngineProcess:
    engine = server_state(request).engine
    if engine is None:
        raise APIError(503, "The model is still loading; try again in a few seconds.", code="model_not_ready")
    return engine
