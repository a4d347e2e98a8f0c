"""The sampler: per-slot state of every running request and the ordered sampling chain, batched.

A request takes a slot when it starts (its prompt becomes the slot's history) and gives it back when
it ends. Each step, `sample` runs the chain over the logits of the slots that advance, draws one token per slot
with a number from the slot's own generator, and appends the tokens to the histories. The only host
synchronisation is reading the drawn ids back.

Chain: logit bias and bans (including EOS while `min_tokens` is not reached, or always with `ignore_eos`), then
the slot's order of penalties, DRY, the truncation samplers, mirostat, XTC, temperature, dynamic temperature and
smoothing (sampling/order.py); temperature 0 (or below 1e-5, where dividing would overflow) takes the arg-max of
the processed logits. Randomness (the draw, XTC's coin) comes from each slot's own generator, so a seeded request
is reproducible; the generators live on the host (Python's), so that a step's random numbers reach the device as
one small tensor instead of one launch per slot. Mirostat's target `mu` is kept per slot, on the device, and goes
back with a rewind.
"""

import math
import random
import secrets
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import torch

from sampling.breakers import BreakerAnalysis, Tokenize, shared_breaker_cache
from sampling.candidates import TOKEN_ID_STEPS, compacted, expanded
from sampling.dry import DryRow, breaker_flags, dry_penalty_matrix, rep_limit
from sampling.history import TokenHistories
from sampling.mirostat import mask_mirostat, updated_mu
from sampling.params import SamplingParams
from sampling.penalties import apply_penalties, token_counts
from sampling.steps import STEPS, TRUNCATING_STEPS, on_rows
from sampling.xtc import mask_xtc

# Breaker occurrences remembered per slot: enough that one still lies inside the DRY window when the newest
# ones straddle its start.
_OCCURRENCES_KEPT = 8


@dataclass
class _Slot:
    params: SamplingParams
    generator: random.Random
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
        newline = tokenize("\n")
        # XTC never removes these: the newline token (the last of "\n"'s tokens) and EOS.
        protected = sorted(t for t in self._eos_ids | frozenset(newline[-1:]) if t < self.vocab_size)
        self._xtc_protected_ids = torch.tensor(protected, device=self.device, dtype=torch.long)
        self._xtc_protected_columns = torch.zeros(1, self.vocab_size, dtype=torch.bool, device=self.device)
        self._xtc_protected_columns[0, self._xtc_protected_ids] = True
        self._slots: dict[int, _Slot] = {}
        self._free = list(reversed(range(slots)))
        # Mirostat's target per slot, and the value it had before each generated token (for rewinds).
        self._mu = torch.zeros(slots, device=self.device)
        self._mu_before = torch.zeros(slots, capacity + 1, device=self.device)

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
            generator=random.Random(seed),
            breakers=breakers,
            recent=deque(history, maxlen=(breakers.longest_tail if breakers else 0) + 1),
        )
        if breakers:
            state.occurrences.extend(reversed(_last_occurrences(history, breakers, _OCCURRENCES_KEPT)))
        self._slots[slot] = state
        self._mu[slot] = 2 * params.mirostat_tau
        return slot

    def rewind(self, slot: int, history: Sequence[int], *, generated: int) -> None:
        """Resets a slot to a shorter history (the engine backed off), keeping its parameters and generator."""
        state = self._slots[slot]
        self._histories.start(slot, history, breaker_flags(history, state.breakers))
        state.generated = generated
        if state.params.uses_mirostat:
            self._mu[slot] = self._mu_before[slot, generated]  # mirostat's target goes back with the output
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
        # -inf is a legitimate "impossible" logit; NaN and +inf are faults, and make a row's sum NaN or +inf.
        healthy = logits.sum(dim=-1) < math.inf
        drawn = [i for i, slot in enumerate(slots) if not self._slots[slot].params.greedy]
        uniforms = [self._slots[slots[i]].generator.random() for i in drawn]
        if len(drawn) == len(slots):
            valid = torch.isfinite(processed.amax(dim=-1)) & healthy
            chosen = draw(torch.softmax(processed, dim=-1), uniforms)
        else:
            best, chosen = processed.max(dim=-1)  # the arg-max and whether anything is possible, in one pass
            valid = torch.isfinite(best) & healthy
            if drawn:
                index = torch.tensor(drawn, device=processed.device)
                chosen = chosen.index_copy(0, index, draw(torch.softmax(processed[index], dim=-1), uniforms))
        self._update_mu(processed, slots, chosen)
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
        token_ids: torch.Tensor | None = None  # once compacted to the candidates: each column's token id
        truncated = False  # a step has removed tokens since the last look at compacting
        after_mirostat: tuple[torch.Tensor, torch.Tensor] | None = None
        for position, step in enumerate(order):
            rest = order[position:]
            if truncated and token_ids is None and not TOKEN_ID_STEPS.intersection(rest) and _any_runs(rest, params):
                truncated = False
                if (found := compacted(logits)) is not None:
                    logits, token_ids = found
                    if after_mirostat is not None:
                        index, kept = after_mirostat
                        after_mirostat = (index, kept.gather(1, token_ids.index_select(0, index)))
            if step == "penalties":
                logits = self._penalise(logits, slots)
            elif step == "dry":
                penalty = self.dry_penalties(slots)
                logits = logits if penalty is None else logits.sub_(penalty)
            elif step == "mirostat":
                logits, after_mirostat = self._mirostat(logits, slots, params)
                truncated = truncated or after_mirostat is not None
            elif step == "xtc":
                logits = self._xtc(logits, slots, params, token_ids)
                truncated = truncated or any(p.uses_xtc for p in params)
            else:
                logits = on_rows(logits, params, STEPS[step])
                truncated = truncated or (step in TRUNCATING_STEPS and any(STEPS[step].uses(p) for p in params))
        if after_mirostat is not None:  # the steps after mirostat cannot change its rows' draw
            index, kept = after_mirostat
            logits = logits.index_copy(0, index, kept)
        return logits if token_ids is None else expanded(logits, token_ids, self.vocab_size)

    def _mirostat(
        self, logits: torch.Tensor, slots: Sequence[int], params: list[SamplingParams]
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]:
        """The mirostat rows cut at their surprise target; their logits from here on, to be kept."""
        members = [i for i, p in enumerate(params) if p.uses_mirostat]
        if not members:
            return logits, None
        index = torch.tensor(members, device=logits.device)
        mu = self._mu[torch.tensor([slots[i] for i in members], device=self.device)].unsqueeze(1)
        kept = mask_mirostat(logits.index_select(0, index), mu.to(logits.dtype))
        return logits.index_copy(0, index, kept), (index, kept)

    def _xtc(
        self,
        logits: torch.Tensor,
        slots: Sequence[int],
        params: list[SamplingParams],
        token_ids: torch.Tensor | None,
    ) -> torch.Tensor:
        """XTC on its rows, each acting on its own coin: one draw from the slot's generator per step (none when
        the probability is 1). `token_ids`: each column's token, when the logits are compacted."""
        members = [i for i, p in enumerate(params) if p.uses_xtc]
        if not members:
            return logits
        coins = [
            params[i].xtc_probability >= 1 or self._slots[slots[i]].generator.random() < params[i].xtc_probability
            for i in members
        ]
        acts = torch.tensor(coins, device=self.device)
        index = torch.tensor(members, device=logits.device)
        thresholds = [params[i].xtc_threshold for i in members]
        if token_ids is None:
            protected = self._xtc_protected_columns
        else:
            protected = torch.isin(token_ids.index_select(0, index), self._xtc_protected_ids)
        part = mask_xtc(logits.index_select(0, index), thresholds, acts.unsqueeze(1), protected)
        return logits.index_copy(0, index, part)

    def _update_mu(self, processed: torch.Tensor, slots: Sequence[int], chosen: torch.Tensor) -> None:
        """After a draw: each mirostat slot remembers its mu for this position, then moves it by the surprise of
        the drawn token in the distribution it was drawn from."""
        members = [i for i, slot in enumerate(slots) if self._slots[slot].params.uses_mirostat]
        if not members:
            return
        index = torch.tensor(members, device=processed.device)
        targets = torch.tensor([slots[i] for i in members], device=self.device)
        positions = torch.tensor([self._slots[slots[i]].generated for i in members], device=self.device)
        drawn = torch.softmax(processed.index_select(0, index), dim=-1).gather(1, chosen[index].unsqueeze(1))
        params = [self._slots[slots[i]].params for i in members]
        tau = torch.tensor([p.mirostat_tau for p in params], device=self.device)
        eta = torch.tensor([p.mirostat_eta for p in params], device=self.device)
        self._mu_before[targets, positions] = self._mu[targets]
        self._mu[targets] = updated_mu(self._mu[targets], drawn.squeeze(1).to(self._mu.dtype), tau, eta)

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
            flags.append(breakers is not None and token in breakers.single)
            if breakers:
                head = breakers.occurrence_ending_at(list(state.recent), len(state.recent) - 1)
                if head is not None:
                    end = self._histories.lengths[slot]  # the position the token is about to take
                    state.occurrences.append((end - (len(state.recent) - 1 - head), end))
        # DRY's match lengths only when a row here uses DRY (a slot's parameters never change, so the others'
        # are never read; a rewind recomputes them).
        uses_dry = any(self._slots[slot].params.uses_dry for slot in slots)
        self._histories.append(slots, chosen, flags, matches=uses_dry)


def _any_runs(steps: Sequence[str], params: list[SamplingParams]) -> bool:
    """Whether any of `steps` does something for any row (otherwise compacting first would be wasted work)."""
    for step in steps:
        if step == "mirostat":
            uses = any(p.uses_mirostat for p in params)
        elif step == "xtc":
            uses = any(p.uses_xtc for p in params)
        else:
            uses = step in STEPS and any(STEPS[step].uses(p) for p in params)
        if uses:
            return True
    return False


def draw(probs: torch.Tensor, uniforms: Sequence[float]) -> torch.Tensor:
    """One token per row by inverse transform sampling: one uniform number in [0, 1) per row (from its slot's own
    generator), then a batched search of the cumulative distribution (a multinomial call per row costs
    milliseconds over a 128k vocabulary)."""
    # Below 1 in float32 too (1 - 2**-24 is float32's largest number under 1).
    drawn = torch.tensor([min(u, 1 - 2**-24) for u in uniforms], dtype=torch.float32, device=probs.device)
    cumulative = probs.cumsum(dim=-1)
    # right=True lands on the first token whose cumulative mass exceeds the draw: never a zero-probability one.
    targets = (drawn * cumulative[:, -1]).unsqueeze(1)
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
