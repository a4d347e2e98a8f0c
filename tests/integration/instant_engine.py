"""An engine that answers every sample at once with a few tokens of fixed text, through the server's public seam
(`create_app(settings, engine=...)`): what the fuzz tests use to drive the HTTP layers (routes, protocol, serving,
middleware) with many odd requests fast. The real engine is what every other integration test runs."""

import asyncio

from server.engine.handle import GenerationHandle, deliver_all
from server.engine.kv.budget import KvBudget
from server.engine.memory_plan import MemoryPlan
from server.engine.request import GenerationOutput, GenerationRequest
from server.engine.stats import EngineStats
from server.engine.text.vocabulary import Vocabulary
from tests import tokenizers

PIECES = ("Hello", ",", " there")


class InstantEngine:
    def __init__(self) -> None:
        tokenizer = tokenizers.smollm2()
        self.vocabulary = Vocabulary(tokenizer, len(tokenizer), frozenset({tokenizer.eos_token_id}))
        self.context_length = 8192
        self.kv_budget = KvBudget(bytes_per_token=1, tokens=1 << 20, prefix_tokens=0)
        self.memory_plan = MemoryPlan(0, "none", "auto", 1, 1 << 20, 1 << 20, 8192, (1 << 20) // 8192)
        self.stats = EngineStats()
        self.status = "ok"
        self.alive = True
        self.in_flight = 0

    def submit(self, requests: list[GenerationRequest]) -> list[GenerationHandle]:
        loop = asyncio.get_running_loop()
        handles = [GenerationHandle(request.sample_id, loop, self.abort) for request in requests]
        for request, handle in zip(requests, handles, strict=True):
            count = min(request.max_tokens, len(PIECES))
            outputs = [
                GenerationOutput(piece, len(request.prompt_ids), i + 1, "length" if i == count - 1 else None)
                for i, piece in enumerate(PIECES[:count])
            ]
            loop.call_soon(deliver_all, [(handle, output) for output in outputs])
        return handles

    def abort(self, sample_id: str) -> None:
        pass  # every answer is complete when it is submitted

    def cancel_all(self, reason: str) -> None:
        pass

    def shutdown(self) -> None:
        pass

    def resident_bytes(self) -> int | None:
        return None
