"""A request that would run for minutes: EOS banned, every token with a colon in it pushed away (so no run of
tokens can spell the `::::` stop string), a large max_tokens. Tests use it to hold a slot busy and then let it
go."""

from functools import cache

from tests import tokenizers


@cache
def _colon_tokens() -> dict[str, int]:
    tokenizer = tokenizers.smollm2()
    return {
        str(i): -100 for token, i in tokenizer.get_vocab().items() if ":" in tokenizer.convert_tokens_to_string([token])
    }


def endless_request(prompt: str = "Once upon a time", max_tokens: int = 4000, **extra: object) -> dict:
    body = {"prompt": prompt, "max_tokens": max_tokens, "ban_eos_token": True, "logit_bias": _colon_tokens()}
    return body | extra
