"""What the serving layer uses of an engine, whether it runs in its own process (client.py, as the server runs
it) or in this one (engine.py, as bench/gpu.py runs it); and what the server holds of it (`ServedEngine`: the
client, or any engine a test or benchmark gives `create_app`)."""

from typing import Literal, Protocol

from server.engine.handle import GenerationHandle
from server.engine.kv.budget import KvBudget
from server.engine.memory_plan import MemoryPlan
from server.engine.request import GenerationRequest
from server.engine.stats import EngineStats
from server.engine.text.vocabulary import Vocabulary

EngineStatus = Literal["loading", "ok", "restarting", "stopped"]


class EngineService(Protocol):
    vocabulary: Vocabulary
    context_length: int
    kv_budget: KvBudget
    memory_plan: MemoryPlan

    @property
    def stats(self) -> EngineStats: ...

    @property
    def alive(self) -> bool: ...

    @property
    def in_flight(self) -> int: ...

    def submit(self, requests: list[GenerationRequest]) -> list[GenerationHandle]: ...

    def abort(self, sample_id: str) -> None: ...

    def cancel_all(self, reason: str) -> None: ...

    def shutdown(self) -> None: ...


class ServedEngine(EngineService, Protocol):
    """The engine a server holds: its service, whether it serves (a supervised engine process restarts), and the
    memory of the process it runs in."""

    @property
    def status(self) -> EngineStatus: ...

    def resident_bytes(self) -> int | None: ...
