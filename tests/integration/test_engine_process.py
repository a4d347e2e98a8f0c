"""The engine runs in a process of its own: it stops with the server, whichever way the server ends, and a dead
engine fails what was waiting with a retryable error instead of leaving it hanging."""

import os
import signal
import threading
import time
from pathlib import Path

import httpx

from tests.integration.endless import endless_request
from tests.integration.server_process import ServerProcess
from tests.integration.sse import data_events


def engine_pid(server: ServerProcess) -> int:
    """The server's child running the engine: multiprocessing's spawned interpreter (not its resource tracker)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            command = (entry / "cmdline").read_bytes()
        except (OSError, IndexError, ValueError):
            continue
        if parent == server.process.pid and b"spawn_main" in command:
            return int(entry.name)
    raise AssertionError("no engine process")


def gone(pid: int, seconds: float = 60) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return True
        if state == "Z":  # exited; its parent has not reaped it (yet)
            return True
        time.sleep(0.05)
    return False


def test_the_engine_has_its_own_process_and_stops_with_the_server():
    server = ServerProcess().wait_ready()
    engine = engine_pid(server)
    assert engine != server.process.pid
    answer = httpx.post(f"{server.url}/v1/completions", json={"prompt": "Hi", "max_tokens": 3}, timeout=60)
    assert answer.status_code == 200 and answer.json()["usage"]["completion_tokens"] == 3
    assert server.stop() == 0
    assert gone(engine)


def test_a_killed_server_takes_its_engine_with_it():
    server = ServerProcess().wait_ready()
    engine = engine_pid(server)
    server.process.kill()
    server.process.wait()
    assert gone(engine)  # its command pipe closed: it shut down on its own


def test_a_dead_engine_fails_the_waiting_requests_retryably_and_health_says_so():
    server = ServerProcess().wait_ready()
    events: list = []

    def read() -> None:
        body = {**endless_request(), "stream": True}
        with httpx.stream("POST", f"{server.url}/v1/completions", json=body, timeout=60) as response:
            events.extend(data_events(response.iter_lines()))

    reader = threading.Thread(target=read)
    reader.start()
    server.wait_while_working(lambda: server.health()["generated_tokens"] == 0)
    os.kill(engine_pid(server), signal.SIGKILL)
    reader.join(timeout=60)
    errors = [event for event in events if isinstance(event, dict) and "error" in event]
    assert errors and errors[0]["error"]["message"] == "the engine stopped; retry in a moment"
    health = httpx.get(f"{server.url}/health", timeout=10)
    assert health.status_code == 503 and health.json()["status"] == "engine_stopped"
    refused = httpx.post(f"{server.url}/v1/completions", json={"prompt": "Hi", "max_tokens": 3}, timeout=10)
    assert refused.status_code == 503 and refused.json()["error"]["message"] == "the engine is not running"
    logged = [line for line in server.output().splitlines() if " ERROR " in line]
    assert len(logged) == 1 and "the engine process exited unexpectedly (code -9)" in logged[0]
    server.stop()
