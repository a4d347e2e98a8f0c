"""A request that would run for minutes: EOS and the label mark banned, a large max_tokens. Tests use it to
hold a slot busy and then let it go."""

from tests import tokenizers


def endless_request(prompt: str = "Once upon a time", max_tokens: int = 4000, **extra: object) -> dict:
    (label_mark,) = tokenizers.smollm2().encode("::::", add_special_tokens=False)
    body = {"prompt": prompt, "max_tokens": max_tokens, "ban_eos_token": True, "logit_bias": {str(label_mark): -100}}
    return body | extra
