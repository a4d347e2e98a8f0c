"""The base of every request body: text that is not Unicode is refused before anything reads it.

JSON may carry a lone UTF-16 surrogate (`"\\ud800"`): legal JSON, but not a character, so no UTF-8 encoder,
tokenizer or header can take it. The one rule for every text field of every route (prompts, messages, stops,
banned strings, breakers, names, tokenizer texts, keys): a 400 that names the field, before validation."""

from collections.abc import Iterator

from pydantic import BaseModel, model_validator

from server.errors import APIError


def _unencodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _texts(value: object, path: str) -> Iterator[tuple[str, str]]:
    """Every string in a JSON value (object keys included) with where it sits, `messages[2].content` style."""
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, dict):
        for key, item in value.items():
            key_path = f"{path}.{key}" if path else str(key)
            if isinstance(key, str):
                yield key_path, key
            yield from _texts(item, key_path)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _texts(item, f"{path}[{index}]")


def first_unencodable(value: object) -> str | None:
    """Where the first string that is not valid Unicode sits, or None."""
    return next((path for path, text in _texts(value, "") if _unencodable(text)), None)


class RequestBody(BaseModel):
    @model_validator(mode="before")
    @classmethod
    def _valid_unicode(cls, data: object) -> object:
        where = first_unencodable(data)
        if where is not None:
            shown = where.encode("utf-8", "backslashreplace").decode()
            raise APIError(
                400,
                f"{shown}: the text holds a lone UTF-16 surrogate, which is not a character; send valid Unicode.",
                param=shown,
            )
        return data
