"""The server's log stays readable: a client that leaves is a normal event (one request-log line, status 499, no
traceback), and a real 500 logs one traceback, with the request's id."""

import httpx
import pytest

from tests.integration.test_disconnect import never_ending

NOISE = ("Traceback", "never retrieved", "CancelledError", "Exception in ASGI application")


def lines_about(output: str, request_id: str) -> list[str]:
    return [line for line in output.splitlines() if request_id in line]


def test_a_client_that_leaves_a_plain_request_is_one_quiet_log_line(server):
    start = len(server.output())
    request_id = "leaves-early-1"
    with pytest.raises(httpx.ReadTimeout):
        # The client gives up after a second; the request would run for minutes.
        httpx.post(
            f"{server.url}/v1/completions",
            json=never_ending("Once upon a time"),
            headers={"X-Request-ID": request_id},
            timeout=1.0,
        )
    server.wait_while_working(lambda: not lines_about(server.output()[start:], request_id))
    server.settled_health()
    logged = server.output()[start:]
    (line,) = lines_about(logged, request_id)
    assert '"status": 499' in line
    assert not any(noise in logged for noise in NOISE), logged


@pytest.fixture(scope="module")
def faulty_server(shared_server):
    return shared_server("--max-running", "4", module="tests.integration.faulty_server")


def test_an_unexpected_error_is_one_traceback_with_the_request_id(faulty_server):
    request_id = "breaks-1"
    start = len(faulty_server.output())  # the server is shared: what it logged before is other tests'
    answer = httpx.post(
        f"{faulty_server.url}/v1/completions",
        json={"prompt": "FAULT:unexpected Hello", "max_tokens": 2},
        headers={"X-Request-ID": request_id},
        timeout=60,
    )
    assert answer.status_code == 500
    assert answer.json()["error"] == {
        "message": "Internal server error: RuntimeError.",
        "type": "server_error",
        "param": None,
        "code": None,
    }
    # The request's log line is written once its answer is out: it may follow the client's read.
    faulty_server.wait_while_working(
        lambda: '"status": 500' not in "".join(lines_about(faulty_server.output(), request_id))
    )
    output = faulty_server.output()[start:]
    assert output.count("Traceback") == 1
    assert "Exception in ASGI application" not in output
    assert f"request {request_id} (POST /v1/completions) failed" in output
    assert "injected: an unexpected error" in output
