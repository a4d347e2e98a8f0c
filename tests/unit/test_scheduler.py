"""The scheduler's rules with plain stand-ins (no model): admission within slots and the KV budget, waiting for
room, prefill chunks within the step's budget, sample groups, a leader that leaves, expiry."""

from sampling import SamplingParams
from server.engine.kv.budget import KvBudget
from server.engine.kv.prefix_cache import PrefixCache
from server.engine.request import GenerationRequest
from server.engine.request_state import RequestState
from server.engine.scheduler import Scheduler
from server.engine.text.detokenizer import IncrementalDetokenizer


def state(
    sample_id: str, prompt_tokens: int, *, group: str | None = None, deadline: float | None = None
) -> RequestState:
    request = GenerationRequest(
        sample_id=sample_id,
        prompt_ids=tuple(range(1, prompt_tokens + 1)),
        params=SamplingParams(),
        stop_strings=(),
        max_tokens=10,
    )
    detokenizer = IncrementalDetokenizer([b""], frozenset())
    return RequestState(request, detokenizer, group=group, deadline=deadline, reservation=prompt_tokens + 10)


def scheduler(
    *, max_running: int = 4, budget_tokens: int = 10_000, chunk: int = 100, prefix: PrefixCache | None = None
):
    return Scheduler(
        max_running=max_running,
        prefill_chunk=chunk,
        budget=KvBudget(bytes_per_token=1, tokens=budget_tokens, prefix_tokens=budget_tokens),
        prefix_cache=PrefixCache(0) if prefix is None else prefix,
        footprint=sum,  # each running request holds exactly its reservation
    )


def prefill_everything(s: Scheduler) -> list:
    """One step, carried out as the engine would: every planned chunk runs and is reported."""
    plan = s.schedule()
    for work in plan.prefill:
        remaining = next(e.remaining for e in s._prefilling if e.group[0] is work.group[0]) - work.tokens
        s.prefilled(work.group, max(remaining, 0))
    return plan


def test_admission_stops_at_the_free_slots_and_the_rest_waits_in_order():
    s = scheduler(max_running=2)
    a, b, c = state("a", 5), state("b", 5), state("c", 5)
    for one in (a, b, c):
        s.add([one])
    plan = s.schedule()
    assert plan.admitted == [[a], [b]] and s.waiting == [c]
    assert [(w.group, w.tokens, w.starts) for w in plan.prefill] == [([a], 5, True), ([b], 5, True)]
    s.finished(a)
    assert s.schedule().admitted == [[c]]


def test_a_request_waits_until_the_kv_budget_holds_it_but_one_alone_always_runs():
    s = scheduler(budget_tokens=100)
    big, small = state("big", 80), state("small", 30)  # reservations 90 and 40
    s.add([big])
    s.add([small])
    assert s.schedule().admitted == [[big]] and s.waiting == [small]
    s.finished(big)
    assert s.schedule().admitted == [[small]]
    huge = scheduler(budget_tokens=10)
    lone = state("lone", 50)
    huge.add([lone])
    assert huge.schedule().admitted == [[lone]]  # over the whole budget, but alone: it runs (and may fail alone)


def test_a_long_prompt_is_prefilled_in_chunks_while_others_decode():
    s = scheduler(chunk=100)
    first = state("first", 10)
    s.add([first])
    prefill_everything(s)  # nothing decodes yet: the whole prompt at once
    assert first.prefilled
    long = state("long", 250)
    s.add([long])
    plans = [prefill_everything(s) for _ in range(3)]
    assert [[w.tokens for w in plan.prefill] for plan in plans] == [[100], [100], [50]]
    assert [plan.decode for plan in plans] == [[first]] * 3
    assert [w.starts for plan in plans for w in plan.prefill] == [True, False, False]
    assert long.prefilled and s.schedule().decode == [first, long]


def test_with_nothing_decoding_four_chunks_a_step_go_to_the_oldest_prompts():
    s = scheduler(chunk=100)
    first, second, third = state("first", 300), state("second", 300), state("third", 300)
    for one in (first, second, third):
        s.add([one])
    plans = [prefill_everything(s) for _ in range(3)]
    # Not every prompt at once: the first is read whole and streams while the others are read.
    assert [(w.group[0].sample_id, w.tokens) for w in plans[0].prefill] == [("first", 300), ("second", 100)]
    assert [(w.group[0].sample_id, w.tokens) for w in plans[1].prefill] == [("second", 100)]
    assert plans[1].decode == [first]
    # A long prompt alone advances by four chunks a step (its reading reported, an abort landing, between).
    s = scheduler(chunk=100)
    long = state("long", 900)
    s.add([long])
    assert [w.tokens for w in prefill_everything(s).prefill] == [400]


def test_the_chunk_budget_is_shared_oldest_first():
    s = scheduler(chunk=100)
    s.add([state("decoding", 3)])
    prefill_everything(s)
    a, b, c = state("a", 60), state("b", 60), state("c", 60)
    for one in (a, b, c):
        s.add([one])
    plan = s.schedule()
    assert [(w.group[0].sample_id, w.tokens) for w in plan.prefill] == [("a", 60), ("b", 40)]


def test_the_prefix_cache_shortens_the_planned_prefill():
    prefix = PrefixCache(1_000)
    prefix.put(tuple(range(1, 41)), object())  # the first 40 tokens of every test prompt
    s = scheduler(prefix=prefix)
    s.add([state("a", 50)])
    assert [w.tokens for w in s.schedule().prefill] == [10]


def test_a_sample_group_is_admitted_together_and_prefilled_once():
    s = scheduler(max_running=3)
    group = [state(f"g-{i}", 20, group="g") for i in range(2)]
    alone = state("alone", 20)
    s.add(group)
    s.add([alone])
    plan = s.schedule()
    assert plan.admitted == [group, [alone]]
    assert [w.group for w in plan.prefill] == [group, [alone]]
    too_many = scheduler(max_running=1)
    too_many.add(group)
    assert too_many.schedule().admitted == []  # never half a group


def test_a_group_whose_leader_leaves_is_led_by_the_next_sample_from_the_start():
    s = scheduler(chunk=10)
    s.add([state("decoding", 3)])
    prefill_everything(s)
    group = [state(f"g-{i}", 25, group="g") for i in range(3)]
    s.add(group)
    prefill_everything(s)  # 10 of 25 done by g-0
    s.finished(group[0])
    (work,) = s.schedule().prefill
    assert (work.group, work.tokens, work.starts) == (group[1:], 10, True)


def test_expired_requests_leave_every_queue():
    s = scheduler(max_running=1)
    running, waiting = state("running", 5, deadline=1e12), state("waiting", 5, deadline=1e12)
    s.add([running])
    s.add([waiting])
    assert s.schedule().admitted == [[running]]
    running.deadline = waiting.deadline = 0.0
    plan = s.schedule()
    assert plan.expired == [running, waiting] and s.idle and plan.prefill == []


def test_finishing_returns_the_room_to_the_prefix_cache():
    prefix = PrefixCache(1_000)
    s = scheduler(budget_tokens=100, prefix=prefix)
    a = state("a", 80)
    s.add([a])
    s.schedule()
    s.finished(state("unknown", 1))  # a request it does not hold: only the fit
    prefix.put(tuple(range(500, 530)), object())  # 30 tokens: over what `a` leaves of the budget
    s.finished(state("unknown", 1))
    assert prefix.tokens == 0
    s.finished(a)
    prefix.put(tuple(range(500, 530)), object())
    s.finished(state("unknown", 1))
    assert prefix.tokens == 30
