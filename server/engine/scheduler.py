"""The scheduler: which requests wait, which run, which are being prefilled, and what each step does.

Requests wait in arrival order and are admitted, a sample group at once (the n samples of one prompt), while
sampler slots are free and the KV budget holds the running requests at their widest (evicting prefix-cache
entries to make it so). Every step decodes every prefilled request once and spends a prefill budget on the
prompts being prefilled, oldest first: a chunk while others decode (so a long prompt never stalls their streams),
and when nothing decodes, `PREFILL_CHUNKS_ALONE` chunks (so the engine reports how far it has read a long prompt,
and an abort takes effect, a few times along the way). Oldest first within the budget, not every prompt at once:
prompts arriving together then start streaming one after another, not all together after all of them are read. A sample
group's prompt is prefilled once, by its first sample (the leader); the others start from a copy of its row.

`schedule()` returns the whole plan of a step; the engine carries it out and reports back (`prefilled`,
`finished`). Nothing else changes the queues.
"""

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from server.engine.kv.budget import KvBudget
from server.engine.kv.prefix_cache import PrefixCache
from server.engine.request_state import RequestState

# Chunks of each prompt prefilled per step when nothing decodes.
PREFILL_CHUNKS_ALONE = 4


@dataclass(frozen=True)
class PrefillWork:
    """Prompt tokens a step runs for one sample group."""

    group: list[RequestState]  # the leader first: it carries the prefill
    tokens: int  # at most this many of its remaining prompt tokens
    starts: bool  # the leader's prefill begins with this chunk (it was admitted, or the group's leader left)


@dataclass(frozen=True)
class StepPlan:
    expired: list[RequestState]  # past their deadline, already out of the queues: the engine ends them
    admitted: list[list[RequestState]]  # sample groups that got a place this step: they need sampler slots
    decode: list[RequestState]  # every prefilled request, advanced by one batched forward
    prefill: list[PrefillWork]  # in order; a group whose prefill ends joins the decoding ones next step


@dataclass
class _Prefilling:
    group: list[RequestState]
    remaining: int = 0  # prompt tokens still to run: estimated when the prefill starts, then as the engine reports
    started: bool = False


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
        self._waiting: deque[RequestState] = deque()
        self._running: list[RequestState] = []
        self._prefilling: deque[_Prefilling] = deque()

    @property
    def idle(self) -> bool:
        return not (self._running or self._waiting)

    @property
    def running(self) -> list[RequestState]:
        return list(self._running)

    @property
    def waiting(self) -> list[RequestState]:
        return list(self._waiting)

    def everyone(self) -> list[RequestState]:
        return [*self._running, *self._waiting]

    def add(self, states: list[RequestState]) -> None:
        """Queues the samples of one prompt (several when n > 1: admitted together, sharing one prefill)."""
        self._waiting.extend(states)

    def schedule(self) -> StepPlan:
        expired = self._take_expired(time.monotonic())
        decode = [state for state in self._running if state.prefilled]
        admitted = self._admit()
        prefill = self._plan_prefill(self._prefill_chunk * (1 if decode else PREFILL_CHUNKS_ALONE))
        return StepPlan(expired, admitted, decode, prefill)

    def prefilled(self, group: list[RequestState], remaining: int) -> None:
        """The engine ran a chunk of `group`'s prompt; `remaining` tokens are left. At 0 the group decodes."""
        entry = next((entry for entry in self._prefilling if entry.group[0] is group[0]), None)
        if entry is None:  # it ended meanwhile, or another sample leads it now
            return
        entry.remaining = remaining
        if remaining == 0:
            self._prefilling.remove(entry)
            for state in group:
                state.prefilled = True

    def finished(self, state: RequestState) -> None:
        """A request ended (for whatever reason): it leaves every queue, and the prefix cache may take the room
        it held. A sample group that loses its leader is led by the next sample, whose prefill starts over."""
        if state in self._running:
            self._running.remove(state)
        if state in self._waiting:
            self._waiting.remove(state)
        for entry in list(self._prefilling):
            if state not in entry.group:
                continue
            leader = entry.group[0] is state
            entry.group.remove(state)
            if not entry.group:
                self._prefilling.remove(entry)
            elif leader:
                entry.started = False
        self._evict_to_fit(self._footprint(self._running))

    def _take_expired(self, now: float) -> list[RequestState]:
        """`--request-timeout`: requests past their deadline leave the queues."""
        expired = [s for s in self.everyone() if s.deadline is not None and now >= s.deadline]
        for state in expired:
            self.finished(state)
        return expired

    def _admit(self) -> list[list[RequestState]]:
        """Moves waiting requests into the running set while slots are free, a sample group at once."""
        admitted = []
        while self._waiting:
            first = self._waiting[0]
            group = [first] if first.group is None else [s for s in self._waiting if s.group == first.group]
            if len(self._running) + len(group) > self._max_running or not self._make_room(group):
                break
            for state in group:
                self._waiting.remove(state)
                self._running.append(state)
            self._prefilling.append(_Prefilling(group))
            admitted.append(group)
        return admitted

    def _plan_prefill(self, budget: int) -> list[PrefillWork]:
        """The prompts to run this step within `budget` tokens, oldest first."""
        work = []
        for entry in self._prefilling:
            if budget <= 0:
                break
            if not entry.started:  # what the prefix cache holds now, when the leader's prefill starts
                entry.remaining = self._to_prefill(entry.group[0])
            tokens = min(budget, entry.remaining)
            work.append(PrefillWork(list(entry.group), tokens, starts=not entry.started))
            entry.started = True
            budget -= tokens
        return work

    def _to_prefill(self, leader: RequestState) -> int:
        """Prompt tokens a prefill starting now runs: those the prefix cache does not hold."""
        request = leader.request
        return len(request.prompt_ids) - self._prefix_cache.reusable(request.prompt_ids, request.cache_reuse)

    def _make_room(self, group: list[RequestState]) -> bool:
        """Whether the KV budget holds the running requests and `group` at their widest, evicting prefix-cache
        entries to make it so. A group that needs more than the whole budget runs alone (it may then fail with an
        out-of-memory error, alone): it never waits forever."""
        needed = self._footprint([*self._running, *group])
        if needed > self._budget.tokens and self._running:
            return False
        self._evict_to_fit(needed)
        return True

    def _evict_to_fit(self, running_tokens: int) -> None:
        """The prefix cache keeps what `running_tokens` leave of the budget."""
        self._prefix_cache.evict_to(max(self._budget.tokens - running_tokens, 0))

    def _footprint(self, states: list[RequestState]) -> int:
        return self._batch_footprint([state.reservation for state in states])
