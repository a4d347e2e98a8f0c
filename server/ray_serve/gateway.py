"""The HTTP ingress: reads each request's body to find its conversation, then hands the whole request to a model
replica through a deployment handle, whose router (router.py) picks the replica that holds that conversation.

It exists because an ingress deployment's router only sees the request's headers: Serve's proxy sends the body
to the replica later. The gateway holds no model and few resources; everything else (API key, limits, errors)
happens in the replica's app, exactly as in the single-process server.
"""

from collections.abc import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse
from ray import serve
from ray.serve.handle import DeploymentHandle, DeploymentResponseGenerator

from server.ray_serve.affinity import conversation_key
from server.ray_serve.router import AFFINITY_KWARG

# The ASGI scope keys a replica needs to run the request (the rest are the gateway's own or not picklable).
_SCOPE_KEYS = (
    "type",
    "asgi",
    "http_version",
    "method",
    "scheme",
    "path",
    "raw_path",
    "query_string",
    "headers",
    "client",
    "server",
)

CONVERSATION_HEADER = "x-conversation-id"

gateway_app = FastAPI(title="rpserve (Ray Serve)", openapi_url=None, docs_url=None, redoc_url=None)


@serve.ingress(gateway_app)
class Gateway:
    def __init__(self, model: DeploymentHandle) -> None:
        self._model = model.options(stream=True)

    @gateway_app.api_route("/{path:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD"])
    async def forward(self, request: Request) -> StreamingResponse:
        body = await request.body()
        # The replica's app is mounted at its root.
        scope = {key: request.scope[key] for key in _SCOPE_KEYS if key in request.scope} | {"root_path": ""}
        # A client that knows its chat's id may name it; otherwise the prompt's beginning tells the chat.
        key = request.headers.get(CONVERSATION_HEADER) or conversation_key(request.url.path, body)
        messages = self._model.remote(scope, body, **{AFFINITY_KWARG: key})
        assert isinstance(messages, DeploymentResponseGenerator)  # the handle streams (see __init__)
        start = await messages.__anext__()

        async def content() -> AsyncIterator[bytes]:
            async for message in messages:
                if message["type"] == "http.response.body" and message.get("body"):
                    yield message["body"]

        response = StreamingResponse(content(), status_code=start["status"])
        # Serve's proxy sets X-Request-ID itself (to the id the replica's app was given).
        response.raw_headers = [(name, value) for name, value in start.get("headers", []) if name != b"x-request-id"]
        return response
