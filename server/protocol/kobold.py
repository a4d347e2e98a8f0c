"""KoboldCpp's `POST /api/extra/abort` body."""

from pydantic import ConfigDict

from server.protocol.body import RequestBody


class AbortBody(RequestBody):
    """Which generation to end: the one named `genkey`, or all of the calling client's when unnamed."""

    model_config = ConfigDict(extra="ignore")
    genkey: str | None = None
