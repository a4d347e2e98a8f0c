"""One model replica: our FastAPI app, whole (API key, limits, routes, engine), served one ASGI request at a time
through a deployment handle. Every answer carries `X-Replica-ID`."""

import asyncio
import contextlib
from collections.abc import AsyncIterator, MutableMapping
from typing import Any

from ray import serve

from server.app import create_app
from server.settings import Settings

REPLICA_HEADER = b"x-replica-id"
_LOAD_POLL_SECONDS = 0.2


class ModelReplica:
    # Ray Serve awaits an async constructor; Python's typing knows no such thing.
    async def __init__(self, settings: Settings) -> None:  # type: ignore[misc]
        failures: list[str] = []
        self._app = create_app(settings, on_engine_failure=failures.append)
        self._lifespan = self._app.router.lifespan_context(self._app)
        await self._lifespan.__aenter__()
        # Ready (and so routed to) only once the model serves.
        while self._app.state.server.engine is None:
            if failures:
                raise RuntimeError(failures[0])
            await asyncio.sleep(_LOAD_POLL_SECONDS)
        self._replica_id = serve.get_replica_context().replica_id.unique_id.encode()

    async def __call__(
        self, scope: dict, body: bytes, affinity_key: str | None = None
    ) -> AsyncIterator[MutableMapping[str, Any]]:
        """The app's ASGI messages for one request. When the caller goes away (the client disconnected), Ray
        cancels this generator; the app then sees `http.disconnect` and cancels the generation."""
        messages: asyncio.Queue[MutableMapping[str, Any]] = asyncio.Queue()
        disconnected = asyncio.Event()
        body_sent = False

        async def receive() -> dict:
            nonlocal body_sent
            if not body_sent:
                body_sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            await disconnected.wait()
            return {"type": "http.disconnect"}

        async def send(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), (REPLICA_HEADER, self._replica_id)]}
            await messages.put(message)

        app = asyncio.ensure_future(self._app(scope, receive, send))
        try:
            while True:
                next_message = asyncio.ensure_future(messages.get())
                await asyncio.wait({next_message, app}, return_when=asyncio.FIRST_COMPLETED)
                if not next_message.done():
                    next_message.cancel()
                    while not messages.empty():
                        yield messages.get_nowait()
                    app.result()  # re-raises what the app raised
                    return
                message = next_message.result()
                yield message
                if message["type"] == "http.response.body" and not message.get("more_body", False):
                    return
        finally:
            disconnected.set()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(asyncio.shield(app), timeout=5)

    def check_health(self) -> None:
        """Ray restarts a replica whose engine died."""
        engine = self._app.state.server.engine
        if engine is None or not engine.alive:
            raise RuntimeError("the engine is not running")

    async def __del__(self) -> None:
        await self._lifespan.__aexit__(None, None, None)
