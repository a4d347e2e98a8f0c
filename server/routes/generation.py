"""What the generating routes share: validating a request against the model and building the engine's input."""

import uuid
from collections.abc import AsyncIterator, Sequence

from prompting import drop_reply_space
from sampling import SamplingParamsError
from server.engine.engine import Engine
from server.engine.request import GenerationOutput, GenerationRequest
from server.errors import APIError
from server.protocol.sampling import SamplerFields
from server.state import ServerState


def generation_request(
    fields: SamplerFields,
    *,
    prompt_ids: Sequence[int],
    max_tokens: int | None,
    n: int | None,
    stops: Sequence[str],
    engine: Engine,
    state: ServerState,
    id_prefix: str,
    turn_stops: Sequence[str] = (),
    turns: int = 1,
) -> GenerationRequest:
    """Raises APIError (400) for anything the model cannot do with this request."""
    if n is not None and n > 1:
        raise APIError(400, "n > 1 is not supported yet: send one request per sample.", param="n")
    model = engine.model
    try:
        params = fields.sampling_params(state.sampling_defaults, state.settings.dry_breakers_always)
    except SamplingParamsError as error:
        raise APIError(400, str(error), param=error.param) from error
    outside = sorted(token for token in params.token_ids() if token >= model.vocab_size)
    if outside:
        param = "logit_bias" if outside[0] in params.logit_bias else "custom_token_bans"
        raise APIError(400, f"{param}: token id {outside[0]} is not in the vocabulary.", param=param)
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
    return GenerationRequest(
        request_id=f"{id_prefix}-{uuid.uuid4().hex}",
        prompt_ids=tuple(prompt_ids),
        params=params,
        # A server stop that is a turn stop for this request ends it only at the last turn.
        stop_strings=tuple(dict.fromkeys([*(s for s in state.settings.stop_strings if s not in turn_stops), *stops])),
        max_tokens=max_tokens or room,
        turn_stops=tuple(turn_stops),
        turns=turns,
    )


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


def finish_error(outputs: Sequence[GenerationOutput]) -> None:
    """A non-streamed request whose generation failed in the engine answers 500 with the engine's reason."""
    if outputs[-1].error:
        raise APIError(500, outputs[-1].error)
