"""`POST /v1/completions`: raw-prompt text completion, streamed or whole, one or several samples."""

from collections.abc import AsyncIterator, Sequence

from fastapi import APIRouter, Request
from fastapi.responses import Response

from prompting import drop_reply_space, ends_with_label_space
from server.engine.engine import Engine
from server.engine.handle import GenerationHandle
from server.engine.request import GenerationOutput, TokenLogprob
from server.engine.tokenization import encode_prompt
from server.protocol.completions import (
    CompletionChoice,
    CompletionLogprobs,
    CompletionRequest,
    CompletionResponse,
    Usage,
)
from server.protocol.fields import ignored_fields_header
from server.routes.delivery import disconnected_response, error_event, merged, sse_response
from server.routes.generation import (
    completed,
    generation_requests,
    record_usage,
    response_id,
    truncated_left,
    without_leading_space,
)
from server.state import ready_engine, server_state

router = APIRouter()


@router.post("/v1/completions", response_model=CompletionResponse)
async def create_completion(
    body: CompletionRequest, request: Request, response: Response
) -> Response | CompletionResponse:
    state = server_state(request)
    engine = ready_engine(request)
    trim = body.trim_label_space if body.trim_label_space is not None else state.settings.trim_label_space
    # A prompt ending in "label: " ends in a lone space token the model never saw before a word; end it at the
    # colon instead and let the reply's first word bring its space (then dropped from the returned text).
    trim = trim and ends_with_label_space(body.prompt)
    prompt_ids = encode_prompt(
        engine.model.tokenizer, body.prompt[:-1] if trim else body.prompt, add_bos=body.add_bos_token is not False
    )
    generations = generation_requests(
        body,
        prompt_ids=truncated_left(prompt_ids, body, engine),
        max_tokens=body.max_tokens,
        n=body.n,
        stops=body.stop_list(),
        id_prefix="cmpl",
        logprobs=body.logprobs,
        skip_special_tokens=body.skip_special_tokens,
        http=request,
        genkey=body.genkey,
    )
    handles = engine.submit_samples(generations)
    echo = body.prompt if body.echo else ""
    headers = ignored_fields_header(body)
    request_id = response_id(generations)
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        outputs = [without_leading_space(h) if trim else h for h in handles]
        events = _chunks(
            request, handles, outputs, engine, request_id, state.model_name, echo, include_usage, body.logprobs
        )
        return sse_response(events, headers=headers)
    samples = await completed(handles, request)
    if samples is None:
        return disconnected_response()
    response.headers.update(headers)
    choices = []
    for index, outputs in enumerate(samples):
        text = "".join(o.text for o in outputs)
        logprobs = None
        if body.logprobs is not None:
            logprobs = completion_logprobs(engine, [t for o in outputs for t in o.logprobs], len(echo), body.logprobs)
        text = echo + (drop_reply_space(text) if trim else text)
        choices.append(
            CompletionChoice(index=index, text=text, logprobs=logprobs, finish_reason=outputs[-1].finish_reason)
        )
    usage = Usage.of_samples([outputs[-1] for outputs in samples])
    return CompletionResponse(id=request_id, model=state.model_name, choices=choices, usage=usage)


def completion_logprobs(engine: Engine, tokens: Sequence[TokenLogprob], offset: int, top: int) -> CompletionLogprobs:
    """OpenAI's shape; `offset` is where the first token's text starts in the returned text."""
    result = CompletionLogprobs()
    for token in tokens:
        text = engine.token_text(token.token_id)
        result.tokens.append(text)
        result.token_logprobs.append(token.logprob)
        result.top_logprobs.append({engine.token_text(i): lp for i, lp in token.top[:top]} if top else None)
        result.text_offset.append(offset)
        offset += len(text)
    return result


async def _chunks(
    request: Request,
    handles: list[GenerationHandle],
    outputs: list[AsyncIterator[GenerationOutput]],
    engine: Engine,
    request_id: str,
    model_name: str,
    echo: str,
    include_usage: bool,
    logprobs: int | None,
) -> AsyncIterator[dict]:
    template = CompletionResponse(id=request_id, model=model_name, choices=[])
    # With include_usage OpenAI sends "usage": null on every chunk but the last; without it, no usage key.
    excluded = set() if include_usage else {"usage"}
    offsets = [len(echo)] * len(handles)
    finals: dict[int, GenerationOutput] = {}

    def chunk(index: int, output: GenerationOutput | None, text: str) -> dict:
        scores = None
        if logprobs is not None and output is not None:
            scores = completion_logprobs(engine, output.logprobs, offsets[index], logprobs)
            offsets[index] += sum(len(t) for t in scores.tokens)
        finish = output.finish_reason if output else None
        choice = CompletionChoice(index=index, text=text, logprobs=scores, finish_reason=finish)
        return template.model_copy(update={"choices": [choice]}).model_dump(exclude=excluded)

    try:
        if echo:
            for index in range(len(handles)):
                yield chunk(index, None, echo)
        async for index, output in merged(outputs):
            if output.error:
                yield error_event(output.error)
                return
            if output.text or output.finish_reason or output.logprobs:
                yield chunk(index, output, output.text)
            if output.finish_reason:
                finals[index] = output
        record_usage(request, list(finals.values()))
        if include_usage and finals:
            usage = Usage.of_samples(list(finals.values()))
            yield template.model_copy(update={"usage": usage}).model_dump()
    finally:
        for handle in handles:
            handle.cancel()
