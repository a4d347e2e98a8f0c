"""One HTTP request's samples in the engine, from submission to the answer: the skeleton every generating route
shares. A route builds its prompt and options, starts a `Generation`, then either collects the samples' outputs
or streams events it makes from them; this module cancels what the client leaves, maps engine failures to HTTP
and records the usage for the request log."""

from collections.abc import AsyncIterator, Callable, Sequence

from fastapi import Request
from sse_starlette import EventSourceResponse, ServerSentEvent

from prompting import drop_label_space
from server.engine.request import GenerationOutput
from server.errors import APIError
from server.protocol.completions import Usage
from server.serving.delivery import collect, error_event, merged, sse_response
from server.serving.engine_requests import PromptSamples
from server.state import ready_engine, server_state


class GenerationFailed(Exception):
    """A sample failed in the engine; `status` is what it answers with."""

    def __init__(self, output: GenerationOutput) -> None:
        assert output.error is not None
        super().__init__(output.error.message)
        self.message = output.error.message
        self.code = output.error.code
        self.status = 503 if output.error.retryable else 500

    def api_error(self) -> APIError:
        retry = {"Retry-After": "1"} if self.status == 503 else None
        return APIError(self.status, self.message, code=self.code, headers=retry)


class Generation:
    def __init__(
        self,
        http: Request,
        samples: PromptSamples,
        *,
        trim_label_space: bool = False,
        genkey: str | None = None,
    ) -> None:
        """Submits the samples; `trim_label_space`: the prompt ends at a label's colon, so the reply's first space
        is the label's and is dropped. `genkey`: KoboldCpp's name for the generation (see server/state.py)."""
        self._http = http
        self._trim = trim_label_space
        self._owners = server_state(http).client_generations
        self.id = samples.id
        self.sample_ids = [request.sample_id for request in samples.requests]
        self._owners.add(self.sample_ids, http.client.host if http.client else "", genkey)
        self.handles = ready_engine(http).submit(samples.requests)
        self.finals: list[GenerationOutput] = []
        self._latest: dict[int, GenerationOutput] = {}  # each sample's latest output, for the log of a cut answer

    async def outputs(self) -> AsyncIterator[tuple[int, GenerationOutput]]:
        """Every sample's outputs as they come, with the sample's index; raises GenerationFailed at the first
        failure. Each sample's last output is also kept in `finals`."""
        async for index, output in merged([self._trimmed(handle) for handle in self.handles]):
            if output.completion_tokens >= getattr(self._latest.get(index), "completion_tokens", 0):
                self._latest[index] = output
            if output.error:
                raise GenerationFailed(output)
            if output.finish_reason:
                self.finals.append(output)
            yield index, output

    def stream(
        self,
        events: Callable[["Generation"], AsyncIterator[dict | ServerSentEvent]],
        headers: dict[str, str] | None = None,
        *,
        done: bool = True,
    ) -> EventSourceResponse:
        """Streams the route's events as SSE (then `data: [DONE]` unless `done` is false). A failure becomes one
        error event; a client that leaves cancels the samples."""

        async def guarded() -> AsyncIterator[dict | ServerSentEvent]:
            try:
                async for event in events(self):
                    yield event
            except GenerationFailed as failure:
                yield error_event(failure.message, failure.code)
            finally:
                self._record_usage()  # also for a stream cut short: what it had generated
                self.cancel()

        return sse_response(guarded(), headers=headers, done=done)

    async def collected(self) -> list[list[GenerationOutput]]:
        """Every sample's outputs of a non-streamed answer. Raises APIError when a sample failed, and
        ClientDisconnected (answered 499) when the client left first."""
        try:
            samples = await collect([self._trimmed(handle) for handle in self.handles], self._http)
        finally:
            self.cancel()
        for outputs in samples:
            if outputs[-1].error:
                raise GenerationFailed(outputs[-1]).api_error()
        self.finals = [outputs[-1] for outputs in samples]
        self._record_usage()
        return samples

    def usage(self) -> Usage:
        return Usage.of_samples(self.finals)

    def cancel(self) -> None:
        """Ends what has not ended yet (the client left, or the answer is complete)."""
        for handle in self.handles:
            handle.cancel()
        self._owners.discard(self.sample_ids)

    def _trimmed(self, outputs: AsyncIterator[GenerationOutput]) -> AsyncIterator[GenerationOutput]:
        return without_label_space(outputs) if self._trim else outputs

    def _record_usage(self) -> None:
        """Token counts and finish reasons for the request's log line (see server/middleware/request_log.py): the
        whole answer's, or what each sample had generated when the answer was cut short. A sample the client
        stopped (it left, or aborted it) is "cancelled" there, whatever the client was told."""
        complete = len(self.finals) == len(self.handles)
        outputs = self.finals if complete else list(self._latest.values())
        if outputs:
            usage = Usage.of_samples(outputs)
            self._http.state.usage = (usage.prompt_tokens, usage.completion_tokens)
            self._http.state.shifted_tokens = max(output.shifted_tokens for output in outputs)
        # Streamed answers keep each sample's latest output; collected ones their finals, in sample order.
        last = [self._latest.get(index) for index in range(len(self.handles))] if self._latest else self.finals
        last += [None] * (len(self.handles) - len(last))
        self._http.state.finish_reasons = [
            "cancelled" if output is None or output.finish_reason is None or output.cancelled else output.finish_reason
            for output in last
        ]


def without_label_space(outputs: AsyncIterator[GenerationOutput]) -> AsyncIterator[GenerationOutput]:
    """Drops the one space the reply's first word carries after a label that ends at its colon."""

    async def trimmed() -> AsyncIterator[GenerationOutput]:
        first = True
        async for output in outputs:
            if first and output.text:
                first = False
                output = output.with_text(drop_label_space(output.text))
            yield output

    return trimmed()


def joined_text(outputs: Sequence[GenerationOutput]) -> str:
    return "".join(output.text for output in outputs)
