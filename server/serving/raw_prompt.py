"""The token ids of a raw prompt (`/v1/completions`, llama.cpp's `/completion`): one BOS, the label-space trim,
then `truncation_length`."""

from dataclasses import dataclass

from prompting import ends_with_label_space
from server.engine.service import EngineService
from server.protocol.generation import RawPromptFields
from server.serving.engine_requests import truncated_left
from server.serving.tokenizing import encoded, prompt_ids


@dataclass(frozen=True)
class RawPrompt:
    ids: list[int]
    trims_label_space: bool  # the prompt was sent without its label's space: drop the reply's first space


async def raw_prompt(
    body: RawPromptFields, prompt: str | list[int], engine: EngineService, trim_by_default: bool
) -> RawPrompt:
    """A prompt ending in "label: " ends in a lone space token the model never saw before a word; it is sent
    ending at the colon instead, and the reply's first word brings its space (then dropped from the text)."""
    add_bos = body.add_bos_token is not False
    trim = body.trim_label_space if body.trim_label_space is not None else trim_by_default
    if isinstance(prompt, list):
        ids = engine.vocabulary.with_bos(prompt) if add_bos else list(prompt)
        trim = False
    else:
        trim = trim and ends_with_label_space(prompt)
        # A prompt to be cut to `truncation_length` may be longer than any context: no length bound then.
        encode = encoded if body.truncation_length else prompt_ids
        ids = await encode(engine, prompt[:-1] if trim else prompt, add_bos=add_bos)
    return RawPrompt(truncated_left(ids, body.truncation_length, body.max_tokens, engine), trim)
