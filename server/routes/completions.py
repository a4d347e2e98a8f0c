"""`POST /v1/completions`: raw-prompt text completion, streamed or whole."""

import uuid
from collections.abc import AsyncIterator

from fastapi import APIRouter, Request
from fastapi.responses import Response

from sampling import SamplingParamsError
from server.engine.engine import Engine
from server.engine.handle import GenerationHandle
from server.engine.request import FinishReason, GenerationOutput, GenerationRequest
from server.engine.tokenization import encode_prompt
from server.errors import APIError
from server.protocol.completions import (
    CompletionChoice,
    CompletionRequest,
    CompletionResponse,
    Usage,
)
from server.routes.delivery import (
    ClientDisconnected,
    collect,
    disconnected_response,
    error_event,
    sse_response,
)
from server.state import ServerState, ready_engine, server_state

router = APIRouter()


@router.post("/v1/completions", response_model=CompletionResponse)
async def create_completion(body: CompletionRequest, request: Request) -> Response | CompletionResponse:
    state = server_state(request)
    engine = ready_engine(request)
    generation = generation_request(body, engine, state)
    handle = engine.submit(generation)
    echo = body.prompt if body.echo else ""
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return sse_response(_chunks(handle, state.model_name, echo=echo, include_usage=include_usage))
    try:
        outputs = await collect(handle, request)
    except ClientDisconnected:
        return disconnected_response()
    last = outputs[-1]
    if last.error:
        raise APIError(500, last.error)
    return CompletionResponse(
        id=handle.request_id,
        model=state.model_name,
        choices=[CompletionChoice(text=echo + "".join(o.text for o in outputs), finish_reason=last.finish_reason)],
        usage=Usage.of(last.prompt_tokens, last.completion_tokens),
    )


def generation_request(body: CompletionRequest, engine: Engine, state: ServerState) -> GenerationRequest:
    """Validates the request against the model and turns it into the engine's input."""
    if body.n is not None and body.n > 1:
        raise APIError(400, "n > 1 is not supported yet: send one request per sample.", param="n")
    model = engine.model
    try:
        params = body.sampling_params(state.sampling_defaults, state.settings.dry_breakers_always)
    except SamplingParamsError as error:
        raise APIError(400, str(error), param=error.param) from error
    outside = sorted(token for token in params.token_ids() if token >= model.vocab_size)
    if outside:
        param = "logit_bias" if outside[0] in params.logit_bias else "custom_token_bans"
        raise APIError(400, f"{param}: token id {outside[0]} is not in the vocabulary.", param=param)
    prompt_ids = encode_prompt(model.tokenizer, body.prompt, add_bos=body.add_bos_token is not False)
    room = model.context_length - len(prompt_ids)
    if room < 1 or (body.max_tokens is not None and body.max_tokens > room):
        wanted = f" plus {body.max_tokens} to generate" if body.max_tokens is not None else ""
        raise APIError(
            400,
            f"This model's maximum context length is {model.context_length} tokens; the prompt has "
            f"{len(prompt_ids)}{wanted}. Shorten the prompt or lower max_tokens.",
            param="prompt" if room < 1 else "max_tokens",
            code="context_length_exceeded",
        )
    return GenerationRequest(
        request_id=f"cmpl-{uuid.uuid4().hex}",
        prompt_ids=tuple(prompt_ids),
        params=params,
        stop_strings=tuple(dict.fromkeys([*state.settings.stop_strings, *body.stop_list()])),
        max_tokens=body.max_tokens or room,
    )


async def _chunks(handle: GenerationHandle, model_name: str, *, echo: str, include_usage: bool) -> AsyncIterator[dict]:
    template = CompletionResponse(id=handle.request_id, model=model_name, choices=[])
    # With include_usage OpenAI sends "usage": null on every chunk but the last; without it, no usage key.
    excluded = set() if include_usage else {"usage"}

    def chunk(text: str, finish_reason: FinishReason | None = None) -> dict:
        choice = CompletionChoice(text=text, finish_reason=finish_reason)
        return template.model_copy(update={"choices": [choice]}).model_dump(exclude=excluded)

    last: GenerationOutput | None = None
    try:
        if echo:
            yield chunk(echo)
        async for last in handle:
            if last.error:
                yield error_event(last.error)
                return
            if last.text or last.finish_reason:
                yield chunk(last.text, last.finish_reason)
        if include_usage and last is not None:
            usage = Usage.of(last.prompt_tokens, last.completion_tokens)
            yield template.model_copy(update={"usage": usage}).model_dump()
    finally:
        handle.cancel()
