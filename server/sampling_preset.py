"""The server's sampling preset (`--sampling-preset`): defaults for what a client leaves out, and forced values
that replace what a client sends.

A preset file is a JSON object of sampler fields under any client's names. A field's value is a default (used
when the client sends nothing), or `{"value": ..., "force": true}`: the client's value is replaced, and the
answer says so in `X-Overridden-Fields` (operators who serve one model to people with untouched clients, whose
clients send their own sampler values on every request). Without a preset the defaults are the model card's.
A preset shipped with the server (server/presets/) can be named instead of a path: `--sampling-preset
herrsimian-card`.
"""

import json
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from sampling import SamplingParams, SamplingParamsError
from server.errors import APIError
from server.protocol.sampling import SamplerFields

SHIPPED_PRESETS = Path(__file__).resolve().parent / "presets"
OVERRIDDEN_FIELDS_HEADER = "X-Overridden-Fields"


class PresetError(Exception):
    """The sampling preset file cannot be used; the message says why."""


@dataclass(frozen=True)
class SamplingPreset:
    defaults: SamplingParams
    forced: SamplerFields | None = None

    def params_for(self, fields: SamplerFields, always_breakers: list[str]) -> SamplingParams:
        """The request's values over the defaults, then the forced values over those; raises SamplingParamsError
        naming the first bad field."""
        params = fields.sampling_params(self.defaults, always_breakers)
        return self.forced.sampling_params(params, always_breakers) if self.forced else params

    def overridden(self, fields: SamplerFields) -> list[str]:
        """The fields whose value the client sent and the preset replaced."""
        if self.forced is None:
            return []
        return sorted(self.forced.model_fields_set & fields.model_fields_set)


def preset_path(given: Path) -> Path:
    """A file, or the name of a shipped preset (`herrsimian-card`)."""
    if given.exists():
        return given
    shipped = {path.stem.lower(): path for path in SHIPPED_PRESETS.glob("*.json")}
    return shipped.get(str(given).lower().removesuffix(".json"), given)


def load_preset(given: Path | None, always_breakers: list[str]) -> SamplingPreset:
    if given is None:
        return SamplingPreset(SamplingParams())
    path = preset_path(given)
    try:
        entries = json.loads(path.read_text())
        if not isinstance(entries, dict):
            raise PresetError(f"sampling preset '{path}' must be a JSON object of sampler fields")
        defaults, forced = _split(entries)
        base = SamplerFields.model_validate(defaults).sampling_params(SamplingParams(), always_breakers)
        forced_fields = SamplerFields.model_validate(forced) if forced else None
        if forced_fields is not None:
            forced_fields.sampling_params(base, always_breakers)  # checks the forced values once, at start-up
        return SamplingPreset(base, forced_fields)
    except OSError as error:
        raise PresetError(f"cannot read sampling preset '{path}': {error.strerror}") from error
    except json.JSONDecodeError as error:
        raise PresetError(f"sampling preset '{path}' is not valid JSON: {error.msg}") from error
    except ValidationError as error:
        first = error.errors()[0]
        raise PresetError(f"sampling preset '{path}': {'.'.join(map(str, first['loc']))}: {first['msg']}") from error
    except (SamplingParamsError, APIError) as error:  # an out-of-range value; text that is not Unicode
        raise PresetError(f"sampling preset '{path}': {error}") from error


def _split(entries: dict) -> tuple[dict, dict]:
    """Plain values and `{"value": ...}` entries are defaults; `{"value": ..., "force": true}` ones are forced."""
    defaults: dict = {}
    forced: dict = {}
    for name, entry in entries.items():
        if isinstance(entry, dict) and "value" in entry:
            (forced if entry.get("force") is True else defaults)[name] = entry["value"]
        else:
            defaults[name] = entry
    return defaults, forced
