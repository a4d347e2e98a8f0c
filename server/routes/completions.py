"""`POST /v1/completions`: raw-prompt text completion, streamed or whole."""

from collections.abc import AsyncIterator

from fastapi import APIRouter, Request
from fastapi.responses import Response

from prompting import drop_reply_space, ends_with_label_space
from server.engine.handle import GenerationHandle
from server.engine.request import FinishReason, GenerationOutput
from server.engine.tokenization import encode_prompt
from server.protocol.completions import CompletionChoice, CompletionRequest, CompletionResponse, Usage
from server.routes.delivery import ClientDisconnected, collect, disconnected_response, error_event, sse_response
from server.routes.generation import finish_error, generation_request, without_leading_space
from server.state import ready_engine, server_state

router = APIRouter()


@router.post("/v1/completions", response_model=CompletionResponse)
async def create_completion(body: CompletionRequest, request: Request) -> Response | CompletionResponse:
    state = server_state(request)
    engine = ready_engine(request)
    trim = body.trim_label_space if body.trim_label_space is not None else state.settings.trim_label_space
    # A prompt ending in "label: " ends in a lone space token the model never saw before a word; end it at the
    # colon instead and let the reply's first word bring its space (then dropped from the returned text).
    trim = trim and ends_with_label_space(body.prompt)
    prompt = body.prompt[:-1] if trim else body.prompt
    generation = generation_request(
        body,
        prompt_ids=encode_prompt(engine.model.tokenizer, prompt, add_bos=body.add_bos_token is not False),
        max_tokens=body.max_tokens,
        n=body.n,
        stops=body.stop_list(),
        engine=engine,
        state=state,
        id_prefix="cmpl",
    )
    handle = engine.submit(generation)
    echo = body.prompt if body.echo else ""
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        outputs = without_leading_space(handle) if trim else handle
        return sse_response(_chunks(handle, outputs, state.model_name, echo=echo, include_usage=include_usage))
    try:
        outputs = await collect(handle, request)
    except ClientDisconnected:
        return disconnected_response()
    finish_error(outputs)
    text = "".join(o.text for o in outputs)
    last = outputs[-1]
    return CompletionResponse(
        id=handle.request_id,
        model=state.model_name,
        choices=[
            CompletionChoice(text=echo + (drop_reply_space(text) if trim else text), finish_reason=last.finish_reason)
        ],
        usage=Usage.of(last.prompt_tokens, last.completion_tokens),
    )


async def _chunks(
    handle: GenerationHandle,
    outputs: AsyncIterator[GenerationOutput],
    model_name: str,
    *,
    echo: str,
    include_usage: bool,
) -> AsyncIterator[dict]:
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
        async for last in outputs:
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
