"""From a validated protocol request to the engine's requests, one per sample: limits, admission, sampling
parameters, the context check, then the build. Each step raises APIError naming what is wrong."""

import dataclasses
import uuid
from collections.abc import Sequence
from typing import NamedTuple

from fastapi import Request

from sampling import SamplingParams, SamplingParamsError
from server.engine.request import GenerationRequest
from server.engine.service import EngineService
from server.errors import APIError
from server.protocol.generation import GenerationOptions
from server.protocol.sampling import SamplerFields
from server.state import ServerState, ready_engine, server_state

MAX_STOP_STRINGS = 32
MAX_STOP_LENGTH = 256
MAX_LOGIT_BIAS = 1024


class PromptSamples(NamedTuple):
    """The engine requests of one answer: one per sample, their ids the answer's id (plus `-<index>` when there
    are several)."""

    id: str
    requests: list[GenerationRequest]


def engine_requests(
    http: Request, fields: SamplerFields, options: GenerationOptions, prompt_ids: Sequence[int], id_prefix: str
) -> PromptSamples:
    """One engine request per sample of the HTTP request `http`."""
    state, engine = server_state(http), ready_engine(http)
    check_limits(options, fields)
    check_admission(options.samples, state, engine)
    check_prompt(prompt_ids, engine)
    params = sampling_params(fields, state, engine)
    room = context_room(len(prompt_ids), options.max_tokens, engine)
    answer_id = f"{id_prefix}-{uuid.uuid4().hex}"
    base = GenerationRequest(
        sample_id=answer_id,
        prompt_ids=tuple(prompt_ids),
        params=params,
        # A server stop that is a turn stop for this request ends it only at the last turn.
        stop_strings=tuple(
            dict.fromkeys([*(s for s in state.settings.stop_strings if s not in options.turn_stops), *options.stops])
        ),
        max_tokens=options.max_tokens or room,
        turn_stops=options.turn_stops,
        turns=options.turns,
        logprobs=options.logprobs,
        skip_special_tokens=options.skip_special_tokens,
        banned_strings=tuple(text for text in fields.banned_strings or () if text),
        log_id=getattr(http.state, "request_id", ""),
        cache_reuse=state.settings.cache_reuse if fields.cache_reuse is None else fields.cache_reuse,
    )
    return PromptSamples(answer_id, samples_of(base, options.samples))


def check_limits(options: GenerationOptions, fields: SamplerFields) -> None:
    """Bounds on what one request may ask for, each a 400 naming its field."""
    if len(options.stops) > MAX_STOP_STRINGS:
        raise APIError(400, f"stop: at most {MAX_STOP_STRINGS} stop strings (got {len(options.stops)}).", param="stop")
    if any(len(stop) > MAX_STOP_LENGTH for stop in options.stops):
        raise APIError(400, f"stop: each stop string may have at most {MAX_STOP_LENGTH} characters.", param="stop")
    if fields.logit_bias and len(fields.logit_bias) > MAX_LOGIT_BIAS:
        raise APIError(400, f"logit_bias: at most {MAX_LOGIT_BIAS} entries.", param="logit_bias")
    if fields.banned_strings and any(len(text) > MAX_STOP_LENGTH for text in fields.banned_strings):
        raise APIError(400, f"banned_strings: each at most {MAX_STOP_LENGTH} characters.", param="banned_strings")


def check_admission(samples: int, state: ServerState, engine: EngineService) -> None:
    """400 for more samples than run at once; 429 when the queue is full."""
    settings = state.settings
    if samples > settings.max_running:
        raise APIError(400, f"n is {samples}; this server runs at most {settings.max_running} at once.", param="n")
    capacity = settings.max_running + settings.max_queued
    if engine.in_flight + samples > capacity:
        raise APIError(
            429,
            f"The server is busy: {engine.in_flight} requests are running or queued (at most {capacity}). "
            "Retry in a moment.",
            code="server_busy",
            type="rate_limit_error",
            headers={"Retry-After": "1"},
        )


def check_prompt(prompt_ids: Sequence[int], engine: EngineService) -> None:
    if not prompt_ids:
        raise APIError(400, "The prompt is empty: it must hold at least one token.", param="prompt")
    outside = engine.vocabulary.outside(prompt_ids)
    if outside:
        raise APIError(400, f"prompt: token id {outside[0]} is not in the vocabulary.", param="prompt")


def sampling_params(fields: SamplerFields, state: ServerState, engine: EngineService) -> SamplingParams:
    """The request's sampler values over the server's defaults (under its forced values), checked against the
    vocabulary."""
    try:
        params = state.sampling_preset.params_for(fields, state.settings.dry_breakers_always)
    except SamplingParamsError as error:
        raise APIError(400, str(error), param=error.param) from error
    outside = engine.vocabulary.outside(sorted(params.logit_bias))
    if outside:
        raise APIError(400, f"logit_bias: token id {outside[0]} is not in the vocabulary.", param="logit_bias")
    # Banning a token this vocabulary does not have bans nothing (SillyTavern sends Llama-3's <|eot_id|>).
    unknown = engine.vocabulary.outside(list(params.banned_token_ids))
    return dataclasses.replace(params, banned_token_ids=params.banned_token_ids - frozenset(unknown))


def context_room(prompt_tokens: int, max_tokens: int | None, engine: EngineService) -> int:
    """Tokens the context leaves after the prompt; 400 `context_length_exceeded` when that is not enough."""
    room = engine.context_length - prompt_tokens
    if room < 1 or (max_tokens is not None and max_tokens > room):
        wanted = f" plus {max_tokens} to generate" if max_tokens is not None else ""
        raise APIError(
            400,
            f"This model's maximum context length is {engine.context_length} tokens; the prompt has "
            f"{prompt_tokens}{wanted}. Shorten the prompt or lower max_tokens.",
            param="prompt" if room < 1 else "max_tokens",
            code="context_length_exceeded",
        )
    return room


def samples_of(base: GenerationRequest, samples: int) -> list[GenerationRequest]:
    """Distinct samples, each reproducible: sample i draws with seed + i; their ids are the base id + `-i`."""
    if samples == 1:
        return [base]
    seed = base.params.seed
    return [
        dataclasses.replace(
            base,
            sample_id=f"{base.sample_id}-{i}",
            params=dataclasses.replace(base.params, seed=None if seed is None else seed + i),
        )
        for i in range(samples)
    ]


def truncated_left(
    prompt_ids: list[int], truncation_length: int | None, max_tokens: int | None, engine: EngineService
) -> list[int]:
    """text-generation-webui's `truncation_length`: the prompt's last tokens, BOS kept first, so that prompt and
    `max_tokens` fit in it."""
    if not truncation_length:
        return prompt_ids
    budget = min(truncation_length, engine.context_length) - (max_tokens or 0)
    bos_id = engine.vocabulary.bos_id
    if budget < 1 or len(prompt_ids) <= budget:
        return prompt_ids
    if bos_id is not None and prompt_ids and prompt_ids[0] == bos_id:
        return [bos_id, *prompt_ids[len(prompt_ids) - budget + 1 :]]
    return prompt_ids[-budget:]
