"""The API key: when the server has one, every route but /health requires it."""

import hmac

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.middleware.base import RequestResponseEndpoint

from server.errors import error_body

OPEN_PATHS = frozenset({"/health"})


def presented_key(request: Request) -> str | None:
    """`Authorization: Bearer <key>` (OpenAI, SillyTavern) or `x-api-key: <key>` (TabbyAPI)."""
    authorization = request.headers.get("authorization", "")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return request.headers.get("x-api-key")


def install_api_key(app: FastAPI, api_key: str | None) -> None:
    if not api_key:
        return

    @app.middleware("http")
    async def require_api_key(request: Request, call_next: RequestResponseEndpoint) -> Response:
        key = presented_key(request)
        if request.url.path in OPEN_PATHS or (key and hmac.compare_digest(key.encode(), api_key.encode())):
            return await call_next(request)
        message = "Invalid API key." if key else "This server requires an API key (Authorization: Bearer <key>)."
        body = error_body(message, type="invalid_request_error", code="invalid_api_key")
        return JSONResponse(body, status_code=401, headers={"WWW-Authenticate": "Bearer"})
