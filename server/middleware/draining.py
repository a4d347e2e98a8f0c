"""Shutdown drain: after SIGTERM the server keeps its port open but answers every new request with 503 and
`Retry-After` (so load balancers and clients move on), while the requests already running finish.

Plain ASGI middleware, not Starlette's BaseHTTPMiddleware: that one hides the client's disconnect from the
routes, which must see it to cancel generation.
"""

from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from server.errors import error_body
from server.state import ServerState

# Still answered while draining: scrapers watch the drain through it.
_ANSWERED_WHILE_DRAINING = frozenset({"/metrics"})


class Draining:
    def __init__(self, app: ASGIApp, state: ServerState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.state.draining or scope["path"] in _ANSWERED_WHILE_DRAINING:
            await self.app(scope, receive, send)
            return
        body = error_body(
            "The server is shutting down; retry on another replica or in a moment.",
            type="server_error",
            code="shutting_down",
        )
        headers = {"Retry-After": "5", "Connection": "close"}
        await JSONResponse(body, status_code=503, headers=headers)(scope, receive, send)
