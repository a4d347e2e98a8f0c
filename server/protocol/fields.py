"""Which fields of a request body this server ignored: users see them in a response header, not only in logs."""

from urllib.parse import quote

from pydantic import AliasChoices, BaseModel

IGNORED_FIELDS_HEADER = "X-Ignored-Fields"


def ignored_fields(request: BaseModel) -> list[str]:
    """Keys of the body that no field reads, under its name or any of its aliases."""
    known: set[str] = set()
    for name, field in type(request).model_fields.items():
        known.add(name)
        alias = field.validation_alias
        if isinstance(alias, AliasChoices):
            known.update(choice for choice in alias.choices if isinstance(choice, str))
        elif isinstance(alias, str):
            known.add(alias)
    return sorted(key for key in request.model_extra or {} if key not in known)


def ignored_fields_header(request: BaseModel) -> dict[str, str]:
    ignored = ignored_fields(request)
    # A header holds printable ASCII only: other keys are shown percent-encoded.
    shown = [key if key.isascii() and key.isprintable() else quote(key, safe="") for key in ignored]
    return {IGNORED_FIELDS_HEADER: ", ".join(shown)} if ignored else {}
