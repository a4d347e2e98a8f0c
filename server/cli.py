"""`rpserve`: parse the settings, check what can be checked at once, and serve until stopped."""

import contextlib
import logging
import sys
import time
from collections.abc import Iterator
from types import FrameType

import uvicorn
from sse_starlette.sse import AppStatus

from server.app import create_app
from server.engine.options import ModelLoadError
from server.sampling_preset import PresetError
from server.settings import command_line_settings
from server.state import ServerState

# The end of `--shutdown-timeout` kept for after the drain (at most half of it): cancelled requests send their
# last event, connections close, the engine process stops. The drain itself gets the rest.
_WIND_DOWN_SECONDS = 2.0
# Of that: connections still open this long after the cancel are cut.
_FINAL_EVENTS_SECONDS = 1


class _Server(uvicorn.Server):
    """Graceful shutdown in two stages. SIGTERM starts a drain: the port stays open, new requests get 503 (see
    server/middleware/draining.py) and running ones get `--shutdown-timeout` seconds to finish; then what is left is
    cancelled with an error and uvicorn shuts down, all within the timeout. A second signal skips the wait. uvicorn
    re-raises SIGTERM once it has shut down, which would end the process with status -15; a server that drained
    exits 0 instead."""

    def __init__(self, config: uvicorn.Config, state: ServerState) -> None:
        super().__init__(config)
        self._state = state
        self._drain_deadline: float | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._drain_deadline is None and not self.should_exit:
            timeout = self._state.settings.shutdown_timeout
            self._drain_deadline = time.monotonic() + timeout - min(_WIND_DOWN_SECONDS, timeout / 2)
            self._state.draining = True
            return
        super().handle_exit(sig, frame)

    async def on_tick(self, counter: int) -> bool:
        if self._drain_deadline is not None and not self.should_exit:
            engine = self._state.engine
            busy = engine is not None and engine.in_flight > 0
            if busy and time.monotonic() >= self._drain_deadline:
                assert engine is not None
                engine.cancel_all("The server is shutting down; retry in a moment.")
            if not busy or time.monotonic() >= self._drain_deadline:
                self.should_exit = True
        return await super().on_tick(counter)

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        with super().capture_signals():
            yield
            self._captured_signals.clear()


def main(argv: list[str] | None = None) -> int:
    settings = command_line_settings("rpserve", argv)
    if settings is None:
        return 2
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    failures: list[str] = []
    server: _Server

    def stop_on_engine_failure(message: str) -> None:
        """The model cannot be loaded, or the engine died and will not be restarted: the server exits 1."""
        failures.append(message)
        server.should_exit = True

    try:
        app = create_app(settings, on_engine_failure=stop_on_engine_failure)
    except ModelLoadError as error:
        print(f"rpserve: error: {error}", file=sys.stderr)
        return 1
    except PresetError as error:
        print(f"rpserve: error: {error}", file=sys.stderr)
        return 2
    # Streams end when their requests do (the drain above), not at the signal, which sse-starlette does by default.
    AppStatus.disable_automatic_graceful_drain()
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        timeout_graceful_shutdown=_FINAL_EVENTS_SECONDS,
    )
    server = _Server(config, app.state.server)
    server.run()
    if failures:
        print(f"rpserve: error: {failures[0]}", file=sys.stderr)
        return 1
    return 0
