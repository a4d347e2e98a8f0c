"""The server's sampling defaults: the model card's, or a preset file's."""

import json

from pydantic import ValidationError

from sampling import SamplingParams, SamplingParamsError
from server.protocol.sampling import SamplerFields
from server.settings import Settings


class PresetError(Exception):
    """The sampling preset file cannot be used; the message says why."""


def sampling_defaults(settings: Settings) -> SamplingParams:
    if settings.sampling_preset is None:
        return SamplingParams()
    path = settings.sampling_preset
    try:
        fields = SamplerFields.model_validate(json.loads(path.read_text()))
        return fields.sampling_params(SamplingParams(), settings.dry_breakers_always)
    except OSError as error:
        raise PresetError(f"cannot read sampling preset '{path}': {error.strerror}") from error
    except json.JSONDecodeError as error:
        raise PresetError(f"sampling preset '{path}' is not valid JSON: {error.msg}") from error
    except ValidationError as error:
        first = error.errors()[0]
        raise PresetError(f"sampling preset '{path}': {'.'.join(map(str, first['loc']))}: {first['msg']}") from error
    except SamplingParamsError as error:
        raise PresetError(f"sampling preset '{path}': {error}") from error
