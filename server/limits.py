"""Request body size limit: a body over `--max-body-mb` is refused with 413 before it is read."""

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.middleware.base import RequestResponseEndpoint

from server.errors import error_body


def install_body_limit(app: FastAPI, max_body_mb: float) -> None:
    limit = int(max_body_mb * 2**20)

    @app.middleware("http")
    async def limit_body(request: Request, call_next: RequestResponseEndpoint) -> Response:
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            message = f"The request body is {int(length)} bytes; this server accepts at most {limit}."
            return JSONResponse(error_body(message, type="invalid_request_error", code="body_too_large"), 413)
        return await call_next(request)
