"""`rpserve`: parse the settings, check what can be checked at once, and serve until stopped."""

import contextlib
import logging
import sys
from collections.abc import Iterator

import uvicorn
from pydantic import ValidationError

from server.app import create_app
from server.engine.errors import ModelLoadError
from server.engine.loader import resolve_device
from server.sampling_defaults import PresetError
from server.settings import Settings


class _Server(uvicorn.Server):
    """uvicorn re-raises SIGTERM once it has shut down gracefully, which ends the process with status -15; a server
    that drained its requests exits 0 instead."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        with super().capture_signals():
            yield
            self._captured_signals.clear()


def main(argv: list[str] | None = None) -> int:
    try:
        settings = Settings(_cli_parse_args=sys.argv[1:] if argv is None else argv)
    except ValidationError as error:
        first = error.errors()[0]
        print(f"rpserve: error: {'.'.join(map(str, first['loc']))}: {first['msg']}", file=sys.stderr)
        return 2
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        resolve_device(settings.device)
    except ModelLoadError as error:
        print(f"rpserve: error: {error}", file=sys.stderr)
        return 1

    failures: list[str] = []
    server: _Server

    def stop_on_load_failure(message: str) -> None:
        failures.append(message)
        server.should_exit = True

    try:
        app = create_app(settings, on_load_failure=stop_on_load_failure)
    except PresetError as error:
        print(f"rpserve: error: {error}", file=sys.stderr)
        return 2
    server = _Server(uvicorn.Config(app, host=settings.host, port=settings.port, log_level=settings.log_level))
    server.run()
    if failures:
        print(f"rpserve: error: {failures[0]}", file=sys.stderr)
        return 1
    return 0
