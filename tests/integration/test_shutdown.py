"""SIGTERM: new connections are refused, running requests get `--shutdown-timeout` to finish, then the process
exits 0."""

import threading
import time

import httpx

from tests.integration.endless import endless_request
from tests.integration.server_process import ServerProcess
from tests.integration.sse import data_events


def test_sigterm_drains_then_exits_cleanly():
    server = ServerProcess("--shutdown-timeout", "2").wait_ready()
    endless = endless_request(max_tokens=5000, stream=True)
    events: list = []

    def read_stream() -> None:
        with httpx.stream("POST", f"{server.url}/v1/completions", json=endless, timeout=60) as response:
            try:
                events.extend(data_events(response.iter_lines()))
            except httpx.HTTPError:
                events.append("cut")

    reader = threading.Thread(target=read_stream)
    reader.start()
    while not events and server.health()["running"] == 0:
        time.sleep(0.05)
    started = time.monotonic()
    assert server.stop() == 0
    assert time.monotonic() - started < 15
    reader.join(timeout=10)
    assert not reader.is_alive()
    assert "Traceback" not in server.output()
