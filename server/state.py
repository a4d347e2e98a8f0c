"""What the routes share: the settings, the engine once it is started, and which client owns which generation."""

from dataclasses import dataclass, field

from fastapi import Request

from server.engine.service import ServedEngine
from server.errors import APIError
from server.sampling_preset import SamplingPreset
from server.settings import Settings


class ClientGenerations:
    """Which client each generating sample belongs to, for KoboldCpp's `/api/extra/abort`, which names no request:
    it ends the generations of the client that calls it (only the one it names by `genkey`, when it names one)."""

    def __init__(self) -> None:
        self._owners: dict[str, tuple[str, str | None]] = {}  # sample id -> (client host, genkey)

    def add(self, sample_ids: list[str], client: str, genkey: str | None) -> None:
        for sample_id in sample_ids:
            self._owners[sample_id] = (client, genkey)

    def discard(self, sample_ids: list[str]) -> None:
        for sample_id in sample_ids:
            self._owners.pop(sample_id, None)

    def of(self, client: str, genkey: str | None) -> list[str]:
        """The samples of `client`, only those named `genkey` when it is given."""
        return [
            sample_id
            for sample_id, (owner, key) in self._owners.items()
            if owner == client and (genkey is None or key == genkey)
        ]


@dataclass
class ServerState:
    settings: Settings
    model_name: str
    sampling_preset: SamplingPreset
    engine: ServedEngine | None = None
    draining: bool = False  # SIGTERM came: new requests get 503 while running ones finish
    client_generations: ClientGenerations = field(default_factory=ClientGenerations)


def server_state(request: Request) -> ServerState:
    return request.app.state.server


def ready_engine(request: Request) -> ServedEngine:
    """The engine, when it serves; else a 503 saying why, before any answer (a stream included) starts."""
    engine = server_state(request).engine
    if engine is None:
        raise APIError(503, "The model is still loading; try again in a few seconds.", code="model_not_ready")
    if engine.status != "ok":
        raise APIError(
            503,
            "The engine is restarting; retry in a moment."
            if engine.status == "restarting"
            else "The engine has stopped.",
            code=f"engine_{engine.status}",
            headers={"Retry-After": "5"},
        )
    return engine
