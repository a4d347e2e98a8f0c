"""What goes between the server and the engine process (torch-free: the server unpickles these).

Down the command pipe, tuples: ("add", [GenerationRequest, ...]), ("abort", sample_id), ("cancel_all", reason),
("shutdown",). Up the results pipe: `Ready` once the model is loaded (or the ModelLoadError that stopped it), then
one `Step` per engine step that produced something.
"""

from dataclasses import dataclass

from server.engine.kv.budget import KvBudget
from server.engine.memory_plan import MemoryPlan
from server.engine.request import GenerationOutput
from server.engine.stats import EngineStats
from server.engine.text.vocabulary import Vocabulary


@dataclass(frozen=True)
class Ready:
    vocabulary: Vocabulary
    context_length: int
    kv_budget: KvBudget
    memory_plan: MemoryPlan
    stats: EngineStats


@dataclass(frozen=True)
class Step:
    outputs: list[tuple[str, GenerationOutput]]  # (sample id, output)
    stats: EngineStats
    first_tokens: list[float]  # seconds from submission to a request's first token
    token_gaps: list[float]  # seconds between two tokens of a request
