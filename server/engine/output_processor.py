"""Output processing: what a newly sampled token means for its request.

The token is appended, detokenized (UTF-8 hold-back) and scanned for stop and banned strings; the text that is
certain goes to the client. The processor says when the request ends (EOS, a stop string, its length) or must
back off (a banned string appeared); the engine carries that out. It also records logprobs and token timings and
delivers each request's last output.
"""

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from server.engine.handle import OutputSink
from server.engine.request import FinishReason, GenerationError, TokenLogprob
from server.engine.request_state import RequestState
from server.engine.stats import TokenTimings
from server.engine.text.detokenizer import IncrementalDetokenizer
from server.engine.text.vocabulary import Vocabulary

content_log = logging.getLogger("rpserve.content")


@dataclass(frozen=True)
class Ending:
    """The request is done: `text` is its last piece."""

    text: str
    reason: FinishReason
    stop_string: str | None = None
    by_token: bool = False  # the last token (EOS, or the one completing a stop) is not part of the text
    cancelled: bool = False  # an abort ended it


@dataclass(frozen=True)
class BackOff:
    """A banned string starts at character `banned_at` of the output: back off to the token that wrote it."""

    banned_at: int


class OutputProcessor:
    def __init__(
        self,
        vocabulary: Vocabulary,
        context_length: int,
        outbox: OutputSink,
        timings: TokenTimings | None,
        log_content: bool,
    ) -> None:
        self._vocabulary = vocabulary
        self._outbox = outbox
        self._context_length = context_length
        self._timings = timings
        self._log_content = log_content

    def detokenizer(self, skip_special_tokens: bool) -> IncrementalDetokenizer:
        skipped = self._vocabulary.special_ids if skip_special_tokens else frozenset()
        return IncrementalDetokenizer(self._vocabulary.token_bytes, skipped)

    def advance(self, state: RequestState, token: int) -> Ending | BackOff | None:
        """Appends `token`; delivers the text that is certain, or says how the request ends or backs off."""
        if state.guard:
            state.guard.before_token(state.detokenizer, state.stops)
        state.output_ids.append(token)
        self._observe_token(state)
        if token in self._vocabulary.eos_ids:
            return Ending(state.stops.flush(), "stop", by_token=True)
        scan = state.stops.push(state.detokenizer.push(token))
        if scan.banned_at is not None:
            return BackOff(scan.banned_at)
        if scan.stopped:
            return Ending(scan.release, "stop", scan.stop, by_token=True)
        if self._out_of_room(state):
            return Ending(scan.release + state.stops.flush(), "length")
        text = state.guard.sendable(scan, state.stops) if state.guard else scan.release
        if text:
            self._outbox.put(state.sample_id, state.output(text))
        return None

    def back_off(self, state: RequestState, banned_at: int) -> int | None:
        """Discards the tokens from the one that began a banned string; returns how many remain, or None when the
        request has backed off too often and must end."""
        guard = state.guard
        assert guard is not None  # only requests with banned strings report one
        if guard.exhausted:
            return None
        position = guard.back_off(banned_at, state.output_ids, state.detokenizer, state.stops)
        discarded = len(state.output_ids) - position
        del state.output_ids[position:]
        del state.pending_logprobs[max(len(state.pending_logprobs) - discarded, 0) :]
        return position

    def finish(self, state: RequestState, ending: Ending, error: GenerationError | None = None) -> None:
        """Delivers the request's last output."""
        if ending.by_token and state.pending_logprobs:
            state.pending_logprobs.pop()  # the EOS or stop token is not part of the returned text
        text = state.guard.flush(ending.text) if state.guard else ending.text
        output = state.output(text, ending.reason, error, ending.stop_string, cancelled=ending.cancelled)
        self._outbox.put(state.sample_id, output)
        if self._log_content:
            self._log_text(state, ending.reason)

    def record_logprobs(self, logits: torch.Tensor, stepped: list[RequestState], tokens: Sequence[int | None]) -> None:
        """Each sampled token's logprob and its request's number of alternatives, under the model's own
        distribution (None: the row was not sampled); one host transfer for the whole step."""
        wanted = [i for i, s in enumerate(stepped) if s.request.logprobs is not None and tokens[i] is not None]
        if not wanted:
            return
        index = torch.tensor(wanted, device=logits.device)
        logprobs = torch.log_softmax(logits.index_select(0, index).float(), dim=-1)
        chosen_ids = [token for i in wanted if (token := tokens[i]) is not None]
        chosen = logprobs.gather(1, torch.tensor(chosen_ids, device=logits.device).unsqueeze(1))
        widest = max(stepped[i].request.logprobs or 0 for i in wanted)
        top = logprobs.topk(widest, dim=-1) if widest else None
        chosen_values = chosen.squeeze(1).tolist()
        top_values, top_ids = (top.values.tolist(), top.indices.tolist()) if top else ([], [])
        for position, i in enumerate(wanted):
            count = stepped[i].request.logprobs or 0
            alternatives = (
                tuple(zip(top_ids[position][:count], top_values[position][:count], strict=True)) if top else ()
            )
            token = chosen_ids[position]
            stepped[i].pending_logprobs.append(TokenLogprob(token, chosen_values[position], alternatives))

    def _out_of_room(self, state: RequestState) -> bool:
        generated = len(state.output_ids)
        total = len(state.request.prompt_ids) + generated
        return generated >= state.request.max_tokens or total >= self._context_length

    def _observe_token(self, state: RequestState) -> None:
        now = time.monotonic()
        if self._timings is not None:
            if state.last_token_at is None:
                self._timings.first_token(now - state.submitted_at)
            else:
                self._timings.token_gap(now - state.last_token_at)
        state.last_token_at = now

    def _log_text(self, state: RequestState, reason: FinishReason) -> None:
        """`--log-content`: the prompt and output text, which are private and logged only when asked."""
        record = {
            "request_id": state.request.log_id,
            "generation_id": state.sample_id,
            "finish_reason": reason,
            "prompt": self._vocabulary.decode(state.request.prompt_ids),
            "output": self._vocabulary.decode(state.output_ids),
        }
        content_log.info("%s", json.dumps(record, ensure_ascii=False))
