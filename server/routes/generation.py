"""What the generating routes share: validating a request against the model and building the engine's input."""

import dataclasses
import uuid
from collections.abc import AsyncIterator, Sequence

from fastapi import Request

from prompting import drop_reply_space
from sampling import SamplingParamsError
from server.engine.engine import Engine
from server.engine.handle import GenerationHandle
from server.engine.request import GenerationOutput, GenerationRequest
from server.errors import APIError
from server.protocol.completions import CompletionRequest, Usage
from server.protocol.sampling import SamplerFields
from server.routes.delivery import ClientDisconnected, collect
from server.state import ServerState, ready_engine, server_state


def generation_requests(
    fields: SamplerFields,
    *,
    prompt_ids: Sequence[int],
    max_tokens: int | None,
    n: int | None,
    stops: Sequence[str],
    id_prefix: str,
    turn_stops: Sequence[str] = (),
    turns: int = 1,
    logprobs: int | None = None,
    skip_special_tokens: bool = True,
    http: Request,
    genkey: str | None = None,
) -> list[GenerationRequest]:
    """One request per sample (`n`) of the HTTP request `http`; raises APIError: 400 for anything the model cannot
    do with them, 429 when the queue is full."""
    state, engine = server_state(http), ready_engine(http)
    samples = n or 1
    check_limits(stops, fields, state)
    if samples > state.settings.max_running:
        raise APIError(
            400, f"n is {samples}; this server runs at most {state.settings.max_running} at once.", param="n"
        )
    capacity = state.settings.max_running + state.settings.max_queued
    if engine.in_flight + samples > capacity:
        raise APIError(
            429,
            f"The server is busy: {engine.in_flight} requests are running or queued (at most {capacity}). "
            "Retry in a moment.",
            code="server_busy",
            type="rate_limit_error",
            headers={"Retry-After": "1"},
        )
    model = engine.model
    if not prompt_ids:
        raise APIError(400, "The prompt is empty: it must hold at least one token.", param="prompt")
    outside = [token for token in prompt_ids if not 0 <= token < model.vocab_size]
    if outside:
        raise APIError(400, f"prompt: token id {outside[0]} is not in the vocabulary.", param="prompt")
    try:
        params = fields.sampling_params(state.sampling_defaults, state.settings.dry_breakers_always)
    except SamplingParamsError as error:
        raise APIError(400, str(error), param=error.param) from error
    outside = sorted(token for token in params.logit_bias if token >= model.vocab_size)
    if outside:
        raise APIError(400, f"logit_bias: token id {outside[0]} is not in the vocabulary.", param="logit_bias")
    # Banning a token this vocabulary does not have bans nothing (SillyTavern sends Llama-3's <|eot_id|>).
    params = dataclasses.replace(
        params, banned_token_ids=frozenset(t for t in params.banned_token_ids if t < model.vocab_size)
    )
    room = model.context_length - len(prompt_ids)
    if room < 1 or (max_tokens is not None and max_tokens > room):
        wanted = f" plus {max_tokens} to generate" if max_tokens is not None else ""
        raise APIError(
            400,
            f"This model's maximum context length is {model.context_length} tokens; the prompt has "
            f"{len(prompt_ids)}{wanted}. Shorten the prompt or lower max_tokens.",
            param="prompt" if room < 1 else "max_tokens",
            code="context_length_exceeded",
        )
    base = GenerationRequest(
        request_id=f"{id_prefix}-{uuid.uuid4().hex}",
        prompt_ids=tuple(prompt_ids),
        params=params,
        # A server stop that is a turn stop for this request ends it only at the last turn.
        stop_strings=tuple(dict.fromkeys([*(s for s in state.settings.stop_strings if s not in turn_stops), *stops])),
        max_tokens=max_tokens or room,
        turn_stops=tuple(turn_stops),
        turns=turns,
        logprobs=logprobs,
        skip_special_tokens=skip_special_tokens,
        banned_strings=tuple(text for text in fields.banned_strings or () if text),
        client=http.client.host if http.client else "",
        genkey=genkey,
        log_id=getattr(http.state, "request_id", ""),
    )
    if samples == 1:
        return [base]
    # Distinct samples, each reproducible: sample i draws with seed + i.
    return [
        dataclasses.replace(
            base,
            request_id=f"{base.request_id}-{i}",
            params=dataclasses.replace(params, seed=None if params.seed is None else params.seed + i),
        )
        for i in range(samples)
    ]


MAX_STOP_STRINGS = 32
MAX_STOP_LENGTH = 256
MAX_LOGIT_BIAS = 1024


def check_limits(stops: Sequence[str], fields: SamplerFields, state: ServerState) -> None:
    """Bounds on what one request may ask for, each a 400 naming its field."""
    if len(stops) > MAX_STOP_STRINGS:
        raise APIError(400, f"stop: at most {MAX_STOP_STRINGS} stop strings (got {len(stops)}).", param="stop")
    if any(len(stop) > MAX_STOP_LENGTH for stop in stops):
        raise APIError(400, f"stop: each stop string may have at most {MAX_STOP_LENGTH} characters.", param="stop")
    if fields.logit_bias and len(fields.logit_bias) > MAX_LOGIT_BIAS:
        raise APIError(400, f"logit_bias: at most {MAX_LOGIT_BIAS} entries.", param="logit_bias")
    if fields.banned_strings and any(len(text) > MAX_STOP_LENGTH for text in fields.banned_strings):
        raise APIError(400, f"banned_strings: each at most {MAX_STOP_LENGTH} characters.", param="banned_strings")


def response_id(generations: Sequence[GenerationRequest]) -> str:
    """One id for the whole answer: the samples' ids are it plus `-<index>`."""
    first = generations[0].request_id
    return first.rsplit("-", 1)[0] if len(generations) > 1 else first


def truncated_left(prompt_ids: list[int], body: CompletionRequest, engine: Engine) -> list[int]:
    """text-generation-webui's `truncation_length`: the prompt's last tokens, BOS kept first, so that prompt and
    `max_tokens` fit in it."""
    if not body.truncation_length:
        return prompt_ids
    budget = min(body.truncation_length, engine.model.context_length) - (body.max_tokens or 0)
    bos_id = engine.model.bos_id
    if budget < 1 or len(prompt_ids) <= budget:
        return prompt_ids
    if bos_id is not None and prompt_ids and prompt_ids[0] == bos_id:
        return [bos_id, *prompt_ids[len(prompt_ids) - budget + 1 :]]
    return prompt_ids[-budget:]


def without_leading_space(outputs: AsyncIterator[GenerationOutput]) -> AsyncIterator[GenerationOutput]:
    """Drops the one space the reply's first word carries after a label that ends at its colon."""

    async def trimmed() -> AsyncIterator[GenerationOutput]:
        first = True
        async for output in outputs:
            if first and output.text:
                first = False
                output = output.with_text(drop_reply_space(output.text))
            yield output

    return trimmed()


async def completed(handles: list[GenerationHandle], request: Request) -> list[list[GenerationOutput]] | None:
    """Every sample's outputs of a non-streamed request; None when the client went away first. A generation that
    failed in the engine answers with the engine's reason and status (500, or 503 when a retry can succeed)."""
    try:
        samples = await collect(handles, request)
    except ClientDisconnected:
        return None
    for outputs in samples:
        final = outputs[-1]
        if final.error:
            retry = {"Retry-After": "1"} if final.error_status == 503 else None
            raise APIError(final.error_status, final.error, headers=retry)
    record_usage(request, [outputs[-1] for outputs in samples])
    return samples


def record_usage(request: Request, finals: Sequence[GenerationOutput]) -> None:
    """Token counts for the request's log line (see server/request_log.py)."""
    if finals:
        usage = Usage.of_samples(finals)
        request.state.usage = (usage.prompt_tokens, usage.completion_tokens)
