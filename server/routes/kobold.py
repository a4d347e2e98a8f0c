"""KoboldCpp's `POST /api/extra/abort`: SillyTavern's KoboldCpp type calls it when the user presses stop."""

from fastapi import APIRouter, Request

from server.protocol.kobold import AbortBody
from server.state import ready_engine, server_state

router = APIRouter()


@router.post("/api/extra/abort")
async def kobold_abort(request: Request, body: AbortBody | None = None) -> dict:
    """Ends this client's running generations (only the one named `genkey`, when given); each answers with what
    it had generated."""
    engine = ready_engine(request)
    client = request.client.host if request.client else ""
    for sample_id in server_state(request).client_generations.of(client, body.genkey if body else None):
        engine.abort(sample_id)
    return {"success": "true", "done": "true"}
