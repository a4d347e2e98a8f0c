"""llama.cpp's native `POST /completion`, the way SillyTavern's llama.cpp type generates: its fields, and its
stream of `{"content", "stop"}` events that ends without `[DONE]`."""

from collections.abc import AsyncIterator

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from server.engine.request import GenerationOutput
from server.protocol.llamacpp import LlamaCppCompletionRequest, stop_type
from server.serving.engine_requests import engine_requests
from server.serving.generation import Generation, joined_text
from server.serving.headers import answer_headers
from server.serving.raw_prompt import raw_prompt
from server.state import ready_engine, server_state

router = APIRouter()


@router.post("/completion")
async def llamacpp_completion(body: LlamaCppCompletionRequest, request: Request) -> Response:
    state, engine = server_state(request), ready_engine(request)
    prompt = await raw_prompt(body, body.prompt, engine, state.settings.trim_label_space)
    samples = engine_requests(request, body, body.generation_options(), prompt.ids, "cmpl")
    generation = Generation(request, samples, trim_label_space=prompt.trims_label_space)
    headers = answer_headers(request, body)
    if body.stream:
        return generation.stream(lambda g: _events(g, state.model_name), headers, done=False)
    outputs_of = await generation.collected()
    answers = [
        _final(joined_text(outputs), outputs[-1], state.model_name, index) for index, outputs in enumerate(outputs_of)
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


async def _events(generation: Generation, model_name: str) -> AsyncIterator[dict]:
    async for index, output in generation.outputs():
        if output.finish_reason:
            yield _final(output.text, output, model_name, index)
        elif output.text:
            yield {"index": index, "content": output.text, "stop": False}
