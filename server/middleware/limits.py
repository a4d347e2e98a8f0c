"""Request body size limit: a body over `--max-body-mb` is refused with 413 before it is read.

Plain ASGI middleware, not Starlette's BaseHTTPMiddleware: that one hides the client's disconnect from the
routes, which must see it to cancel generation.
"""

from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from server.errors import error_body


class BodyLimit:
    def __init__(self, app: ASGIApp, max_body_mb: float) -> None:
        self.app = app
        self.limit = int(max_body_mb * 2**20)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            length = dict(scope["headers"]).get(b"content-length", b"")
            if length.isdigit() and int(length) > self.limit:
                message = f"The request body is {int(length)} bytes; this server accepts at most {self.limit}."
                body = error_body(message, type="invalid_request_error", code="body_too_large")
                await JSONResponse(body, status_code=413)(scope, receive, send)
                return
        await self.app(scope, receive, send)
