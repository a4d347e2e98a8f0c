"""One structured log line per request, with its id (`X-Request-ID`, honoured or made), status, duration, time to
the first byte of the answer and token counts, and never any prompt or output text: that content is private.

Plain ASGI middleware, not Starlette's BaseHTTPMiddleware: that one hides the client's disconnect from the
routes, which must see it to cancel generation. The id is set before the route runs, and the usage a route
records in `request.state.usage` is read once the answer is over (the end of a stream included).
"""

import json
import logging
import re
import time
import uuid

from prometheus_client import Counter
from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("rpserve.requests")

_SAFE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def request_id(headers: Headers) -> str:
    """The client's `X-Request-ID` when it is a plain token, else a new one."""
    given = headers.get("x-request-id", "")
    return given if _SAFE_ID.match(given) else uuid.uuid4().hex


class RequestLog:
    """Also counts each answer in `requests` by route template (never the raw path: unbounded labels) and status."""

    def __init__(self, app: ASGIApp, requests: Counter) -> None:
        self.app = app
        self.requests = requests

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        state = scope.setdefault("state", {})
        state["request_id"] = identifier = request_id(Headers(scope=scope))
        status = 500  # what a route that raised answers
        first_byte: float | None = None  # for a stream, about when its first token went out

        async def send_with_id(message: Message) -> None:
            nonlocal status, first_byte
            if message["type"] == "http.response.start":
                status = message["status"]
                MutableHeaders(scope=message)["x-request-id"] = identifier
            elif first_byte is None and message.get("body"):
                first_byte = time.perf_counter()
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:  # also when the client left mid-stream: the route has cancelled its generation by then
            record = {
                "request_id": identifier,
                "method": scope["method"],
                "path": scope["path"],
                "status": status,
                "duration_ms": round((time.perf_counter() - started) * 1000, 1),
            }
            if first_byte is not None:
                record["first_byte_ms"] = round((first_byte - started) * 1000, 1)
            usage = state.get("usage")
            if usage is not None:
                record["prompt_tokens"], record["completion_tokens"] = usage
            if state.get("finish_reasons"):  # one per sample; "cancelled" when the client stopped it
                record["finish_reasons"] = state["finish_reasons"]
            if state.get("shifted_tokens"):  # of the prompt, moved in the cache instead of prefilled
                record["shifted_tokens"] = state["shifted_tokens"]
            if state.get("overridden_fields"):  # by the server's sampling preset (X-Overridden-Fields)
                record["overridden_fields"] = state["overridden_fields"]
            log.info("%s", json.dumps(record))
            route = scope.get("route")
            self.requests.labels(route=getattr(route, "path", "unmatched"), status=str(status)).inc()
