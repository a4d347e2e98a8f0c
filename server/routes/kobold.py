"""KoboldCpp's `POST /api/extra/abort`: SillyTavern's KoboldCpp type calls it when the user presses stop."""

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict

from server.state import ready_engine

router = APIRouter()


class AbortBody(BaseModel):
    model_config = ConfigDict(extra="ignore")
    genkey: str | None = None


@router.post("/api/extra/abort")
async def kobold_abort(request: Request, body: AbortBody | None = None) -> dict:
    """Ends this client's running generations (only the one named `genkey`, when given); each answers with what
    it had generated."""
    client = request.client.host if request.client else ""
    ready_engine(request).abort_client(client, body.genkey if body else None)
    return {"success": "true", "done": "true"}
