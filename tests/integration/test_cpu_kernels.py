"""On the CPU the server runs the engine's compiled kernels (built once into the cache directory); a machine
that cannot build them gets one warning saying why, and a server that answers all the same."""

from collections.abc import Iterator

import httpx
import pytest

from tests.integration.server_process import ServerProcess

PROMPT = '\n\n::::user:Anon: "Where does the stair lead?"\n\n::::assistant:Greta:'
KERNELS_LINE = "CPU forward: the engine's kernels for 61 norms"  # 30 layers' two, and the last


@pytest.fixture(scope="module")
def compilerless_server() -> Iterator[ServerProcess]:
    server = ServerProcess(env={"CXX": "/nonexistent/c++"}).wait_ready()
    yield server
    server.stop()


def test_the_server_runs_on_the_kernels(server):
    assert KERNELS_LINE in server.output()


def test_without_a_compiler_one_warning_and_the_same_service(compilerless_server):
    output = compilerless_server.output()
    warnings = [line for line in output.splitlines() if "WARNING" in line]
    assert len(warnings) == 1, warnings
    assert "CPU kernels unavailable (no C++ compiler '/nonexistent/c++' on PATH: install g++)" in warnings[0]
    assert KERNELS_LINE not in output and "ERROR" not in output
    answer = httpx.post(
        f"{compilerless_server.url}/v1/completions", json={"prompt": PROMPT, "max_tokens": 8}, timeout=120
    )
    assert answer.status_code == 200 and answer.json()["usage"]["completion_tokens"] >= 1
