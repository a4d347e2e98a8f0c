"""The engine thread's state for one sample it is serving, from submission to its last output."""

from dataclasses import dataclass, field

from server.engine.request import FinishReason, GenerationError, GenerationOutput, GenerationRequest, TokenLogprob
from server.engine.text.banned import BannedStringGuard
from server.engine.text.detokenizer import IncrementalDetokenizer
from server.engine.text.stops import StopMatcher


@dataclass(eq=False)  # identity, not field equality: each running request is one object
class RequestState:
    request: GenerationRequest
    detokenizer: IncrementalDetokenizer
    group: str | None = None  # samples of one prompt (n > 1) share its prefill
    sampler_slot: int = -1  # its slot in the sampler, once admitted
    prefilled: bool = False  # its prompt is in the batch cache: it advances with every decode step
    submitted_at: float = 0.0  # time.monotonic() when it was queued
    deadline: float | None = None  # `--request-timeout`: when it ends, whatever it has done
    last_token_at: float | None = None
    reservation: int = 0  # KV positions it is counted for (see kv/budget.py)
    shifted_tokens: int = 0  # of its prompt, moved from the prefix cache (cache reuse)
    stops: StopMatcher = field(init=False)
    output_ids: list[int] = field(default_factory=list)
    pending_logprobs: list[TokenLogprob] = field(default_factory=list)
    guard: BannedStringGuard | None = field(init=False)

    def __post_init__(self) -> None:
        request = self.request
        self.stops = StopMatcher(request.stop_strings, request.turn_stops, request.turns, request.banned_strings)
        self.guard = BannedStringGuard() if request.banned_strings else None

    @property
    def sample_id(self) -> str:
        return self.request.sample_id

    @property
    def last_token(self) -> int:
        """The token the next decode step feeds (the prompt's last one after backing off to the start)."""
        return self.output_ids[-1] if self.output_ids else self.request.prompt_ids[-1]

    def progress(self, prompt_read: int) -> GenerationOutput:
        """An output without text: `prompt_read` of the prompt's tokens are in the cache."""
        return GenerationOutput("", len(self.request.prompt_ids), 0, prompt_read=prompt_read)

    def output(
        self,
        text: str,
        finish_reason: FinishReason | None = None,
        error: GenerationError | None = None,
        stop_string: str | None = None,
        *,
        cancelled: bool = False,
    ) -> GenerationOutput:
        logprobs, self.pending_logprobs = tuple(self.pending_logprobs), []
        return GenerationOutput(
            text=text,
            prompt_tokens=len(self.request.prompt_ids),
            completion_tokens=len(self.output_ids),
            finish_reason=finish_reason,
            error=error,
            logprobs=logprobs,
            stop_string=stop_string,
            shifted_tokens=self.shifted_tokens if finish_reason else 0,
            cancelled=cancelled,
        )
