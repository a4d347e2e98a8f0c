"""The scheduler: which requests wait, which run, which are being prefilled, and what the next step does.

Requests wait in arrival order and are admitted, a sample group at once, while sampler slots are free and the KV
budget holds the running requests at their widest (evicting prefix-cache entries to make it so). Every step
decodes every prefilled request once and spends a prefill budget on the prompts being prefilled: a chunk while
others decode (so a long prompt never stalls their streams), everything when nothing decodes.
"""

import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from server.engine.memory import KvBudget
from server.engine.prefix_cache import PrefixCache
from server.engine.request_state import RequestState


@dataclass(frozen=True)
class StepPlan:
    expired: list[RequestState]  # past their deadline, already out of the queues: the engine ends them
    admitted: list[list[RequestState]]  # sample groups given slots this step: their prefill starts
    decode: list[RequestState]  # every prefilled request, advanced by one batched forward
    prefill_budget: int  # prompt tokens the step may prefill, from the front of `prefilling`


class Scheduler:
    def __init__(
        self,
        *,
        max_running: int,
        prefill_chunk: int,
        budget: KvBudget,
        prefix_cache: PrefixCache,
        footprint: Callable[[list[int]], int],
    ) -> None:
        """`footprint`: the KV positions the batch cache holds for running requests of the given reservations."""
        self._max_running = max_running
        self._prefill_chunk = prefill_chunk
        self._budget = budget
        self._prefix_cache = prefix_cache
        self._batch_footprint = footprint
        self.waiting: deque[RequestState] = deque()
        self.running: list[RequestState] = []
        # Sample groups whose prompt is being prefilled; the first member (the leader) carries the prefill.
        self.prefilling: deque[list[RequestState]] = deque()

    @property
    def idle(self) -> bool:
        return not (self.running or self.waiting)

    def everyone(self) -> list[RequestState]:
        return [*self.running, *self.waiting]

    def add(self, state: RequestState) -> None:
        self.waiting.append(state)

    def schedule(self) -> StepPlan:
        expired = self._take_expired(time.monotonic())
        decode = [state for state in self.running if state.prefilled]
        admitted = self._admit()
        self.prefilling.extend(admitted)
        return StepPlan(expired, admitted, decode, self._prefill_chunk if decode else sys.maxsize)

    def remove(self, state: RequestState) -> None:
        """Takes a request out of every queue. A sample group that loses its leader is led by the next sample
        (whose prefill the engine then starts)."""
        if state in self.running:
            self.running.remove(state)
        if state in self.waiting:
            self.waiting.remove(state)
        for group in list(self.prefilling):
            if state in group:
                group.remove(state)
                if not group:
                    self.prefilling.remove(group)

    def fit_prefix_cache(self) -> None:
        """Shrinks the prefix cache to what the running requests' footprint leaves of the budget."""
        self._evict_to_fit(self._footprint(self.running))

    def _take_expired(self, now: float) -> list[RequestState]:
        """`--request-timeout`: requests past their deadline leave the queues."""
        expired = [s for s in self.everyone() if s.deadline is not None and now >= s.deadline]
        for state in expired:
            self.remove(state)
        return expired

    def _admit(self) -> list[list[RequestState]]:
        """Moves waiting requests into the running set while slots are free, a sample group at once."""
        admitted = []
        while self.waiting:
            group = [self.waiting[0]]
            if group[0].group is not None:
                group = [s for s in self.waiting if s.group == group[0].group]
            if len(self.running) + len(group) > self._max_running or not self._make_room(group):
                break
            for state in group:
                self.waiting.remove(state)
                self.running.append(state)
            admitted.append(group)
        return admitted

    def _make_room(self, group: list[RequestState]) -> bool:
        """Whether the KV budget holds the running requests and `group` at their widest, evicting prefix-cache
        entries to make it so. A group that needs more than the whole budget runs alone (it may then fail with an
        out-of-memory error, alone): it never waits forever."""
        needed = self._footprint([*self.running, *group])
        if needed > self._budget.tokens and self.running:
            return False
        self._evict_to_fit(needed)
        return True

    def _evict_to_fit(self, running_tokens: int) -> None:
        """The prefix cache keeps what `running_tokens` leave of the budget."""
        self._prefix_cache.evict_to(max(self._budget.tokens - running_tokens, 0))

    def _footprint(self, states: list[RequestState]) -> int:
        return self._batch_footprint([state.reservation for state in states])
