"""llama.cpp's native `POST /completion`, the way SillyTavern's llama.cpp type generates: its fields, and its
stream of `{"content", "stop"}` events that ends without `[DONE]`."""

from collections.abc import AsyncIterator

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from server.engine.handle import GenerationHandle
from server.engine.request import GenerationOutput
from server.engine.tokenization import encode_prompt, with_bos
from server.protocol.fields import ignored_fields_header
from server.protocol.llamacpp import LlamaCppCompletionRequest, stop_type
from server.routes.delivery import disconnected_response, error_event, merged, sse_response
from server.routes.generation import completed, generation_requests, record_usage, truncated_left
from server.state import ready_engine, server_state

router = APIRouter()


@router.post("/completion")
async def llamacpp_completion(body: LlamaCppCompletionRequest, request: Request) -> Response:
    state = server_state(request)
    engine = ready_engine(request)
    add_bos = body.add_bos_token is not False
    if isinstance(body.prompt, str):
        prompt_ids = encode_prompt(engine.model.tokenizer, body.prompt, add_bos=add_bos)
    else:
        prompt_ids = with_bos(body.prompt, engine.model.bos_id) if add_bos else list(body.prompt)
    generations = generation_requests(
        body,
        prompt_ids=truncated_left(prompt_ids, body, engine),
        max_tokens=body.max_tokens,
        n=body.n,
        stops=body.stop_list(),
        id_prefix="cmpl",
        logprobs=body.n_probs,
        skip_special_tokens=body.skip_special_tokens,
        http=request,
    )
    handles = engine.submit_samples(generations)
    headers = ignored_fields_header(body)
    if body.stream:
        return sse_response(_events(request, handles, state.model_name), headers=headers, done=False)
    samples = await completed(handles, request)
    if samples is None:
        return disconnected_response()
    answers = [
        _final("".join(o.text for o in outputs), outputs[-1], state.model_name, index)
        for index, outputs in enumerate(samples)
    ]
    return JSONResponse(answers[0] if len(answers) == 1 else answers, headers=headers)


def _final(content: str, last: GenerationOutput, model_name: str, index: int) -> dict:
    return {
        "index": index,
        "content": content,
        "stop": True,
        "model": model_name,
        "tokens_predicted": last.completion_tokens,
        "tokens_evaluated": last.prompt_tokens,
        "stop_type": stop_type(last),
        "stopping_word": last.stop_string or "",
        "truncated": False,
    }


async def _events(request: Request, handles: list[GenerationHandle], model_name: str) -> AsyncIterator[dict]:
    finals = []
    try:
        async for index, output in merged(list(handles)):
            if output.error:
                yield error_event(output.error)
                return
            if output.finish_reason:
                finals.append(output)
                yield _final(output.text, output, model_name, index)
            elif output.text:
                yield {"index": index, "content": output.text, "stop": False}
        record_usage(request, finals)
    finally:
        for handle in handles:
            handle.cancel()
