"""The sampler: per-slot state of every running request and the ordered sampling chain, batched.

A request takes a slot when it starts (its prompt becomes the slot's history) and gives it back when
it ends. Each step, `sample` runs the chain over the logits of the slots that advance, draws one token per slot
with the slot's own generator, and appends the tokens to the histories. The only host synchronisation is reading
the drawn ids back.

Chain: logit bias and bans (including EOS while `min_tokens` is not reached, or always with `ignore_eos`), then
the slot's order of penalties, DRY, top-k, top-p, min-p and temperature; temperature 0 (or below 1e-5, where
dividing would overflow) takes the arg-max of the processed logits.
"""

import secrets
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import torch

from sampling.breakers import BreakerAnalysis, Tokenize, shared_breaker_cache
from sampling.dry import DryRow, breaker_flags, dry_penalty_matrix, rep_limit
from sampling.filters import mask_min_p, mask_top_k, mask_top_p
from sampling.history import TokenHistories
from sampling.params import SamplingParams
from sampling.penalties import apply_penalties, token_counts

# Breaker occurrences remembered per slot: enough that one still lies inside the DRY window when the newest
# ones straddle its start.
_OCCURRENCES_KEPT = 8


@dataclass
class _Slot:
    params: SamplingParams
    generator: torch.Generator
    breakers: BreakerAnalysis | None
    recent: deque[int]  # the last tokens, enough to recognise a multi-token breaker ending now
    occurrences: deque[tuple[int, int]] = field(default_factory=lambda: deque(maxlen=_OCCURRENCES_KEPT))
    generated: int = 0


class Sampler:
    def __init__(
        self,
        *,
        slots: int,
        capacity: int,
        vocab: Sequence[str],
        tokenize: Tokenize,
        eos_ids: Iterable[int] = (),
        device: torch.device | None = None,
    ) -> None:
        self.device = device or torch.device("cpu")
        self.vocab_size = len(vocab)
        self._histories = TokenHistories(slots, capacity, self.device)
        self._breakers = shared_breaker_cache(vocab, tokenize)
        self._eos_ids = frozenset(eos_ids)
        self._slots: dict[int, _Slot] = {}
        self._free = list(reversed(range(slots)))

    @property
    def active_slots(self) -> int:
        return len(self._slots)

    def prepare_breakers(self, breakers: Sequence[str]) -> None:
        """Analyses a breaker list ahead of the first request that uses it (it walks the whole vocabulary)."""
        self._breakers.get(breakers)

    def add(self, history: Sequence[int], params: SamplingParams) -> int:
        """Starts a slot whose history is `history` (the prompt); returns the slot."""
        if not self._free:
            raise RuntimeError("no free sampler slot")
        breakers = self._breakers.get(params.dry_sequence_breakers) if params.uses_dry else None
        slot = self._free.pop()
        self._histories.start(slot, history, breaker_flags(history, breakers))
        seed = secrets.randbits(63) if params.seed is None else params.seed
        state = _Slot(
            params=params,
            generator=torch.Generator(device=self.device).manual_seed(seed),
            breakers=breakers,
            recent=deque(history, maxlen=(breakers.longest_tail if breakers else 0) + 1),
        )
        if breakers:
            state.occurrences.extend(reversed(_last_occurrences(history, breakers, _OCCURRENCES_KEPT)))
        self._slots[slot] = state
        return slot

    def rewind(self, slot: int, history: Sequence[int], *, generated: int) -> None:
        """Resets a slot to a shorter history (the engine backed off), keeping its parameters and generator."""
        state = self._slots[slot]
        self._histories.start(slot, history, breaker_flags(history, state.breakers))
        state.generated = generated
        state.recent = deque(history, maxlen=state.recent.maxlen)
        state.occurrences.clear()
        if state.breakers:
            state.occurrences.extend(reversed(_last_occurrences(history, state.breakers, _OCCURRENCES_KEPT)))

    def remove(self, slot: int) -> None:
        if self._slots.pop(slot, None) is not None:
            self._free.append(slot)

    def sample(
        self, logits: torch.Tensor, slots: Sequence[int], bans: Sequence[frozenset[int]] | None = None
    ) -> list[int | None]:
        """Draws the next token of each slot (one row of `logits` per entry of `slots`) and records it. `bans`:
        tokens each slot may not take at this step only. A slot whose logits hold NaN or +infinity, or whose chain
        leaves no token possible, gets None and records nothing: the caller fails that request alone."""
        processed = self.process(logits, slots, bans)
        # -inf is a legitimate "impossible" logit; NaN and +inf are faults.
        broken = (logits.isnan() | logits.isposinf()).any(dim=-1)
        valid = ~broken & torch.isfinite(processed.amax(dim=-1))
        chosen = processed.argmax(dim=-1)
        drawn = [i for i, slot in enumerate(slots) if not self._slots[slot].params.greedy]
        if drawn:
            index = torch.tensor(drawn, device=processed.device)
            generators = [self._slots[slots[i]].generator for i in drawn]
            chosen = chosen.index_copy(0, index, draw(torch.softmax(processed[index], dim=-1), generators))
        # One host synchronisation for the tokens and their validity together.
        tokens, flags = torch.stack([chosen, valid.to(chosen.dtype)]).tolist()
        good = [i for i, flag in enumerate(flags) if flag]
        if len(good) < len(slots):
            chosen = chosen[torch.tensor(good, dtype=torch.long, device=chosen.device)]
        self._record([slots[i] for i in good], chosen, [tokens[i] for i in good])
        return [token if flag else None for token, flag in zip(tokens, flags, strict=True)]

    def process(
        self, logits: torch.Tensor, slots: Sequence[int], bans: Sequence[frozenset[int]] | None = None
    ) -> torch.Tensor:
        """The logits after the whole chain, temperature included, for the slots' current histories."""
        logits = self._bias_and_bans(logits.to(torch.float32, copy=True), slots, bans)
        groups: dict[tuple[str, ...], list[int]] = {}
        for i, slot in enumerate(slots):
            groups.setdefault(self._slots[slot].params.order, []).append(i)
        for order, members in groups.items():
            if len(members) == len(slots):
                return self._apply_order(logits, slots, order)
            index = torch.tensor(members, device=logits.device)
            part = self._apply_order(logits[index], [slots[i] for i in members], order)
            logits = logits.index_copy(0, index, part)
        return logits

    def dry_penalties(self, slots: Sequence[int]) -> torch.Tensor | None:
        """What DRY subtracts from each slot's logits now, or None when no slot uses DRY."""
        dry_rows = [self._dry_slot(slot) for slot in slots]
        if not any(dry_rows):
            return None
        active = [(i, r) for i, r in enumerate(dry_rows) if r is not None]
        matrix = dry_penalty_matrix(self._histories, [r for _, r in active], self.vocab_size)
        if len(active) == len(slots):
            return matrix
        full = torch.zeros(len(slots), self.vocab_size, device=self.device)
        return full.index_copy(0, torch.tensor([i for i, _ in active], device=self.device), matrix)

    def _apply_order(self, logits: torch.Tensor, slots: Sequence[int], order: Sequence[str]) -> torch.Tensor:
        params = [self._slots[slot].params for slot in slots]
        for step in order:
            if step == "penalties":
                logits = self._penalise(logits, slots)
            elif step == "dry":
                penalty = self.dry_penalties(slots)
                logits = logits if penalty is None else logits.sub_(penalty)
            elif step == "top_k":
                logits = mask_top_k(logits, [p.top_k for p in params])
            elif step == "top_p":
                logits = mask_top_p(logits, [p.top_p for p in params])
            elif step == "min_p":
                logits = mask_min_p(logits, [p.min_p for p in params])
            elif step == "temperature" and any(not p.greedy and p.temperature != 1 for p in params):
                temperatures = [1.0 if p.greedy else p.temperature for p in params]
                logits = logits / torch.tensor(temperatures, device=logits.device).unsqueeze(1)
        return logits

    def _penalise(self, logits: torch.Tensor, slots: Sequence[int]) -> torch.Tensor:
        members = [i for i, slot in enumerate(slots) if self._slots[slot].params.uses_penalties]
        if not members:
            return logits
        params = [self._slots[slots[i]].params for i in members]
        counts = token_counts(
            self._histories, [slots[i] for i in members], [p.penalty_range for p in params], self.vocab_size
        )
        index = torch.tensor(members, device=logits.device)

        def column(values: list[float]) -> torch.Tensor:
            return torch.tensor(values, device=logits.device).unsqueeze(1)

        penalised = apply_penalties(
            logits.index_select(0, index),
            counts,
            column([p.repetition_penalty for p in params]),
            column([p.frequency_penalty for p in params]),
            column([p.presence_penalty for p in params]),
        )
        return logits.index_copy(0, index, penalised)

    def _bias_and_bans(
        self, logits: torch.Tensor, slots: Sequence[int], bans: Sequence[frozenset[int]] | None
    ) -> torch.Tensor:
        for i, slot in enumerate(slots):
            state = self._slots[slot]
            params = state.params
            if params.logit_bias:
                ids = torch.tensor(list(params.logit_bias), device=logits.device)
                bias = torch.tensor(list(params.logit_bias.values()), device=logits.device)
                logits[i].index_add_(0, ids, bias)
            banned = set(params.banned_token_ids) | (bans[i] if bans else frozenset())
            if params.ignore_eos or state.generated < params.min_tokens:
                banned |= self._eos_ids
            if banned:
                logits[i, sorted(banned)] = float("-inf")
        return logits

    def _dry_slot(self, slot: int) -> DryRow | None:
        state = self._slots[slot]
        params = state.params
        if not params.uses_dry:
            return None
        length = self._histories.lengths[slot]
        window = params.dry_penalty_last_n
        start = max(0, length - window) if window > 0 else 0
        return DryRow(
            row=slot,
            multiplier=params.dry_multiplier,
            base=params.dry_base,
            allowed_length=params.dry_allowed_length,
            window_start=start,
            rep_limit=rep_limit(length, start, state.occurrences),
        )

    def _record(self, slots: Sequence[int], chosen: torch.Tensor, tokens: Sequence[int]) -> None:
        if not slots:
            return
        flags = []
        for slot, token in zip(slots, tokens, strict=True):
            state = self._slots[slot]
            state.generated += 1
            state.recent.append(token)
            breakers = state.breakers
            flags.append(bool(breakers) and token in breakers.single)
            if breakers:
                head = breakers.occurrence_ending_at(list(state.recent), len(state.recent) - 1)
                if head is not None:
                    end = self._histories.lengths[slot]  # the position the token is about to take
                    state.occurrences.append((end - (len(state.recent) - 1 - head), end))
        self._histories.append(slots, chosen, flags)


def draw(probs: torch.Tensor, generators: Sequence[torch.Generator]) -> torch.Tensor:
    """One token per slot by inverse transform sampling: one uniform number from each slot's own generator, then
    a batched search of the cumulative distribution (a multinomial call per slot costs milliseconds over a
    128k vocabulary)."""
    uniforms = torch.cat([torch.rand(1, generator=g, device=probs.device) for g in generators])
    cumulative = probs.cumsum(dim=-1)
    # right=True lands on the first token whose cumulative mass exceeds the draw: never a zero-probability one.
    targets = (uniforms * cumulative[:, -1]).unsqueeze(1)
    return torch.searchsorted(cumulative, targets, right=True).squeeze(1).clamp(max=probs.shape[-1] - 1)


def _last_occurrences(history: Sequence[int], breakers: BreakerAnalysis, count: int) -> list[tuple[int, int]]:
    """The last `count` breaker occurrences (head, end) of `history`, newest first."""
    found = []
    for end in range(len(history) - 1, -1, -1):
        head = breakers.occurrence_ending_at(history, end)
        if head is not None:
            found.append((head, end))
            if len(found) == count:
                break
    return found


def probabilities(
    logits: torch.Tensor, history: Sequence[int], params: SamplingParams, *, vocab: Sequence[str], tokenize: Tokenize
) -> torch.Tensor:
    """The distribution one sequence's next token is drawn from after `history`, through the whole chain; for
    temperature 0, all the mass on the arg-max."""
    sampler = Sampler(slots=1, capacity=max(len(history), 1), vocab=vocab, tokenize=tokenize, device=logits.device)
    slot = sampler.add(history, params)
    processed = sampler.process(logits.reshape(1, -1), [slot])[0]
    if params.greedy:
        return torch.nn.functional.one_hot(processed.argmax(), processed.numel()).to(torch.float32)
    return torch.softmax(processed, dim=-1)
