"""`POST /v1/completions`: raw-prompt text completion, streamed or whole, one or several samples."""

from collections.abc import AsyncIterator, Sequence

from fastapi import APIRouter, Request
from fastapi.responses import Response
from sse_starlette import ServerSentEvent

from server.engine.request import TokenLogprob
from server.engine.service import EngineService
from server.protocol.completions import CompletionChoice, CompletionLogprobs, CompletionRequest, CompletionResponse
from server.serving.delivery import progress_comment
from server.serving.engine_requests import engine_requests
from server.serving.generation import Generation, joined_text
from server.serving.headers import answer_headers
from server.serving.raw_prompt import raw_prompt
from server.state import ready_engine, server_state

router = APIRouter()


@router.post("/v1/completions", response_model=CompletionResponse)
async def create_completion(
    body: CompletionRequest, request: Request, response: Response
) -> Response | CompletionResponse:
    state, engine = server_state(request), ready_engine(request)
    prompt = await raw_prompt(body, body.prompt, engine, state.settings.trim_label_space)
    samples = engine_requests(request, body, body.generation_options(), prompt.ids, "cmpl")
    generation = Generation(request, samples, trim_label_space=prompt.trims_label_space, genkey=body.genkey)
    headers = answer_headers(request, body)
    echo = body.prompt if body.echo else ""
    template = CompletionResponse(id=generation.id, model=state.model_name, choices=[])
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return generation.stream(lambda g: _chunks(g, template, engine, echo, include_usage, body.logprobs), headers)
    outputs_of = await generation.collected()
    response.headers.update(headers)
    choices = [
        CompletionChoice(
            index=index,
            text=echo + joined_text(outputs),
            logprobs=None
            if body.logprobs is None
            else completion_logprobs(engine, [t for o in outputs for t in o.logprobs], len(echo), body.logprobs),
            finish_reason=outputs[-1].finish_reason,
        )
        for index, outputs in enumerate(outputs_of)
    ]
    return template.model_copy(update={"choices": choices, "usage": generation.usage()})


def completion_logprobs(
    engine: EngineService, tokens: Sequence[TokenLogprob], offset: int, top: int
) -> CompletionLogprobs:
    """OpenAI's shape; `offset` is where the first token's text starts in the returned text."""
    result = CompletionLogprobs()
    text_of = engine.vocabulary.token_text
    for token in tokens:
        text = text_of(token.token_id)
        result.tokens.append(text)
        result.token_logprobs.append(token.logprob)
        result.top_logprobs.append({text_of(i): lp for i, lp in token.top[:top]} if top else None)
        result.text_offset.append(offset)
        offset += len(text)
    return result


async def _chunks(
    generation: Generation,
    template: CompletionResponse,
    engine: EngineService,
    echo: str,
    include_usage: bool,
    logprobs: int | None,
) -> AsyncIterator[dict | ServerSentEvent]:
    # With include_usage OpenAI sends "usage": null on every chunk but the last; without it, no usage key.
    excluded = set() if include_usage else {"usage"}
    offsets = [len(echo)] * len(generation.handles)

    def chunk(choice: CompletionChoice) -> dict:
        return template.model_copy(update={"choices": [choice]}).model_dump(exclude=excluded)

    if echo:
        for index in range(len(generation.handles)):
            yield chunk(CompletionChoice(index=index, text=echo))
    async for index, output in generation.outputs():
        if output.prompt_read is not None and index == 0:
            yield progress_comment(output)
        if not (output.text or output.finish_reason or output.logprobs):
            continue
        scores = None
        if logprobs is not None:
            scores = completion_logprobs(engine, output.logprobs, offsets[index], logprobs)
            offsets[index] += sum(len(t) for t in scores.tokens)
        yield chunk(
            CompletionChoice(index=index, text=output.text, logprobs=scores, finish_reason=output.finish_reason)
        )
    if include_usage and generation.finals:
        yield template.model_copy(update={"usage": generation.usage()}).model_dump()
