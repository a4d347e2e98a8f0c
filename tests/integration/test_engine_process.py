"""The engine runs in a process of its own: it stops with the server, whichever way the server ends; a dead engine
fails what was waiting with a retryable error and is restarted, and a crash loop ends the server. The HTTP
process never loads torch."""

import os
import shutil
import signal
import threading
import time
from pathlib import Path

import httpx
import pytest

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


def test_the_engine_has_its_own_process_and_stops_with_the_server_which_never_loads_torch():
    server = ServerProcess().wait_ready()
    engine = engine_pid(server)
    assert engine != server.process.pid
    answer = httpx.post(f"{server.url}/v1/completions", json={"prompt": "Hi", "max_tokens": 3}, timeout=60)
    assert answer.status_code == 200 and answer.json()["usage"]["completion_tokens"] == 3
    assert "libtorch" not in Path(f"/proc/{server.process.pid}/maps").read_text()
    assert "libtorch" in Path(f"/proc/{engine}/maps").read_text()
    assert server.stop() == 0
    assert gone(engine)


def test_a_killed_server_takes_its_engine_with_it():
    server = ServerProcess().wait_ready()
    engine = engine_pid(server)
    server.process.kill()
    server.process.wait()
    assert gone(engine)  # its command pipe closed: it shut down on its own


def stream_until_the_end(server: ServerProcess, events: list) -> threading.Thread:
    def read() -> None:
        body = {**endless_request(), "stream": True}
        with httpx.stream("POST", f"{server.url}/v1/completions", json=body, timeout=120) as response:
            events.extend(data_events(response.iter_lines()))

    reader = threading.Thread(target=read)
    reader.start()
    return reader


def wait_health(server: ServerProcess, wanted: str) -> dict:
    """/health once it says `wanted`, failing only if the server stops making progress towards it."""
    seen = []

    def not_yet() -> bool:
        seen.append(httpx.get(f"{server.url}/health", timeout=10).json())
        return seen[-1]["status"] != wanted

    while not_yet():
        assert server.process.poll() is None, server.output()[-2000:]
        time.sleep(0.05)
    return seen[-1]


def metric(server: ServerProcess, name: str) -> float:
    lines = httpx.get(f"{server.url}/metrics", timeout=10).text.splitlines()
    return float(next(line.split()[-1] for line in lines if line.startswith(f"{name} ")))


@pytest.mark.slow
def test_a_dead_engine_is_restarted_and_a_crash_loop_ends_the_server():
    server = ServerProcess("--max-running", "4").wait_ready()
    events = [[] for _ in range(4)]
    readers = [stream_until_the_end(server, mine) for mine in events]
    server.wait_while_working(lambda: server.health()["running"] < 4 or server.health()["generated_tokens"] < 8)
    os.kill(engine_pid(server), signal.SIGKILL)
    assert wait_health(server, "engine_restarting")["model"]
    refused = httpx.post(f"{server.url}/v1/completions", json={**endless_request(), "stream": True}, timeout=10)
    assert refused.status_code == 503 and refused.headers["retry-after"]
    assert refused.json()["error"]["code"] == "engine_restarting"
    for reader in readers:
        reader.join(timeout=60)
    for mine in events:
        errors = [event["error"] for event in mine if isinstance(event, dict) and "error" in event]
        assert [(e["code"], e["message"]) for e in errors] == [
            ("engine_stopped", "The engine stopped; retry in a moment.")
        ]
        assert mine[-1] == "[DONE]"
    health = wait_health(server, "ok")
    assert (health["running"], health["waiting"], health["failed_requests"], health["restarts"]) == (0, 0, 4, 1)
    assert metric(server, "rpserve_engine_restarts_total") == 1 and metric(server, "rpserve_requests_running") == 0
    answer = httpx.post(f"{server.url}/v1/completions", json={"prompt": "Hi", "max_tokens": 3}, timeout=60)
    assert answer.status_code == 200 and answer.json()["usage"]["completion_tokens"] == 3
    log = server.output()
    assert "the engine process exited unexpectedly (code -9); 4 failed; restarting it" in log
    assert "the engine process is back" in log and "leaked semaphore" not in log

    os.kill(engine_pid(server), signal.SIGKILL)  # the second death: restarted again
    wait_health(server, "engine_restarting")
    wait_health(server, "ok")
    os.kill(engine_pid(server), signal.SIGKILL)  # the third within the window: the server gives up
    assert server.process.wait(timeout=60) == 1
    last = server.output().strip().splitlines()[-1]
    assert last.startswith("rpserve: error: the engine process died 3 times within 300 s")


def test_an_engine_that_cannot_reload_its_model_ends_the_server(model_folder, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(model_folder, model)
    server = ServerProcess("--model", str(model)).wait_ready()
    (model / "config.json").unlink()
    os.kill(engine_pid(server), signal.SIGKILL)
    assert server.process.wait(timeout=60) == 1
    last = server.output().strip().splitlines()[-1]
    assert last.startswith("rpserve: error: the engine process could not be restarted: ")
    assert "has no config.json" in last


def test_sigterm_while_the_engine_restarts_stops_the_server():
    server = ServerProcess().wait_ready()
    engine = engine_pid(server)
    os.kill(engine, signal.SIGKILL)
    wait_health(server, "engine_restarting")
    server.process.send_signal(signal.SIGTERM)
    assert server.process.wait(timeout=120) == 0
    assert gone(engine)
