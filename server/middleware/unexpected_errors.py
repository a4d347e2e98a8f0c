"""The last resort for an exception no handler took: one traceback in the log, with the request's id, and a 500
in OpenAI's shape when the answer has not started yet. Nothing is re-raised, so uvicorn does not log the same
exception a second time ("Exception in ASGI application")."""

import logging

from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.errors import error_body

log = logging.getLogger("rpserve.errors")


class UnexpectedErrors:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def watched_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, watched_send)
        except Exception as error:
            request_id = scope.get("state", {}).get("request_id", "")
            log.exception("request %s (%s %s) failed", request_id, scope["method"], scope["path"])
            if not started:
                body = error_body(f"Internal server error: {type(error).__name__}.", type="server_error")
                await JSONResponse(body, status_code=500)(scope, receive, send)
