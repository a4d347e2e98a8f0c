"""What a generating answer tells about its request in headers: the fields it ignored and those the server's
preset overrode (the latter also in the request log)."""

from fastapi import Request

from server.protocol.fields import ignored_fields_header
from server.protocol.sampling import SamplerFields
from server.sampling_preset import OVERRIDDEN_FIELDS_HEADER
from server.state import server_state


def answer_headers(http: Request, body: SamplerFields) -> dict[str, str]:
    headers = ignored_fields_header(body)
    overridden = server_state(http).sampling_preset.overridden(body)
    if overridden:
        headers[OVERRIDDEN_FIELDS_HEADER] = ", ".join(overridden)
        http.state.overridden_fields = overridden
    return headers
