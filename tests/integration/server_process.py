"""A real server process on a free loopback port, as users start it (`python -m server ...`)."""

import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]
# A web page allowed to call the API from a browser, and the API key: the flags of the session's keyed server.
FRONTEND = "http://frontend.example"
API_KEY = "secret"
KEYED = ("--cors-origins", json.dumps([FRONTEND]), "--api-key", API_KEY)


_next_port = itertools.count()
PORTS_PER_WORKER = 2000


def free_port() -> int:
    """A free port from this test worker's own range, below the kernel's ephemeral ports: two workers asking the
    kernel for any free port could both get one and race to bind it, and the loser's tests would then talk to the
    winner's server."""
    worker = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)
    first = 20_000 + worker * PORTS_PER_WORKER
    for _ in range(PORTS_PER_WORKER):
        port = first + next(_next_port) % PORTS_PER_WORKER
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {first}-{first + PORTS_PER_WORKER - 1}")


class ServerProcess:
    def __init__(
        self,
        *args: str,
        env: dict[str, str] | None = None,
        module: str = "server",
        dtype: str = "float32",
        cwd: Path = ROOT,
    ) -> None:
        """`dtype` is float32 unless a test asks otherwise: the tests compare tokens across batches, cached
        prefixes and requests, and bf16 rounding keeps those equal only for identical matrix shapes. `cwd`: the
        checkout whose server runs (benchmarks compare an older one)."""
        self.url = f"http://127.0.0.1:{free_port()}"
        self.log = tempfile.NamedTemporaryFile(prefix="rpserve-", suffix=".log", delete=False)  # noqa: SIM115
        self.health_statuses: list[int] = []
        # One client for all the polling: each new client sets up TLS certificates (tens of ms of CPU), which a
        # poll every 20 ms would spend against the server it waits for.
        self.http = httpx.Client(base_url=self.url, timeout=5)
        self.process = subprocess.Popen(
            [sys.executable, "-m", module, "--port", self.url.rsplit(":", 1)[1], "--dtype", dtype, *args],
            cwd=cwd,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONPATH": str(cwd), **(env or {})},
        )

    def wait_ready(self, timeout: float = 300) -> "ServerProcess":
        """Polls /health from the moment the process starts, recording every status it answers."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.output()[-3000:]}")
            try:
                status = self.http.get("/health", timeout=2).status_code
            except httpx.TransportError:
                time.sleep(0.02)
                continue
            self.health_statuses.append(status)
            if status == 200:
                return self
            time.sleep(0.02)
        raise TimeoutError(f"server not ready after {timeout} s:\n{self.output()[-3000:]}")

    def health(self) -> dict:
        return self.http.get("/health").json()

    def settled_health(self, timeout: float = 10) -> dict:
        """/health once nothing runs, waits or holds a cache: the engine updates its counters at the end of the
        step that delivered an answer, which can come just after the client read it."""
        deadline = time.monotonic() + timeout
        health = self.health()
        while (health["running"], health["waiting"], health["running_caches"]) != (0, 0, 0):
            if time.monotonic() > deadline:
                break
            time.sleep(0.05)
            health = self.health()
        return health

    def wait_while_working(self, busy: Callable[[], bool], stall_seconds: float = 120) -> None:
        """Waits as long as `busy()` holds, failing only when the server makes no progress (no token generated or
        prefilled, no request finished) for `stall_seconds`: a slow machine is no failure, a stuck server is."""
        progress, since = None, time.monotonic()
        while busy():
            health = self.health()
            now = (health["generated_tokens"], health["prefilled_tokens"], health["finished_requests"])
            if now != progress:
                progress, since = now, time.monotonic()
            assert time.monotonic() - since < stall_seconds, f"no progress for {stall_seconds} s: {health}"
            time.sleep(0.05)

    def output(self) -> str:
        return Path(self.log.name).read_text(errors="replace")

    def log_record(self, request_id: str) -> dict:
        """The request log's line for `request_id`, once written (after the answer ends)."""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            for line in self.output().splitlines():
                if "rpserve.requests" in line and f'"{request_id}"' in line:
                    return json.loads(line[line.index("{") :])
            time.sleep(0.05)
        raise AssertionError(f"no log line for {request_id}")

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()
