"""The API key: when the server has one, every route but /health, /metrics and the built-in page requires it.

Plain ASGI middleware, not Starlette's BaseHTTPMiddleware: that one hides the client's disconnect from the
routes, which must see it to cancel generation.
"""

import hmac

from fastapi.responses import JSONResponse
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from server.errors import error_body

OPEN_PATHS = frozenset({"/health", "/metrics", "/"})
# The built-in page's files (server/routes/web.py): they hold no data, and the page asks for the key itself.
OPEN_PREFIX = "/web/"


def presented_key(headers: Headers) -> str | None:
    """`Authorization: Bearer <key>` (OpenAI, SillyTavern) or `x-api-key: <key>` (TabbyAPI)."""
    scheme, _, token = headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return headers.get("x-api-key")


class ApiKey:
    def __init__(self, app: ASGIApp, api_key: str) -> None:
        self.app = app
        self.api_key = api_key.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS or scope["path"].startswith(OPEN_PREFIX):
            await self.app(scope, receive, send)
            return
        key = presented_key(Headers(scope=scope))
        if key and hmac.compare_digest(key.encode(), self.api_key):
            await self.app(scope, receive, send)
            return
        message = "Invalid API key." if key else "This server requires an API key (Authorization: Bearer <key>)."
        body = error_body(message, type="invalid_request_error", code="invalid_api_key")
        await JSONResponse(body, status_code=401, headers={"WWW-Authenticate": "Bearer"})(scope, receive, send)
