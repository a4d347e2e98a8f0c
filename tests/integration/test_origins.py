"""A web page the user happens to visit cannot use a server on loopback: requests addressed to another host name
(DNS rebinding) are refused, and browsers get CORS permission only for the origins the operator lists."""

import json

import httpx
import pytest

from tests.integration.server_process import FRONTEND


def test_a_forged_host_is_refused_logged_and_counted(server, client):
    refused = client.get("/v1/models", headers={"Host": "rebind.attacker.example"})
    assert refused.status_code == 400
    assert refused.json()["error"]["code"] == "host_not_allowed"
    request_id = refused.headers["x-request-id"]
    log_lines = [json.loads(line.split(": ", 1)[1]) for line in server.output().splitlines() if request_id in line]
    assert any(line.get("status") == 400 and line.get("path") == "/v1/models" for line in log_lines)
    assert 'rpserve_requests_total{route="unmatched",status="400"}' in client.get("/metrics").text
    for host in ("localhost", f"127.0.0.1:{server.url.rsplit(':', 1)[1]}", "[::1]:8000"):
        assert client.get("/v1/models", headers={"Host": host}).status_code == 200


def test_without_cors_origins_no_page_is_given_cors_permission(client):
    answer = client.get("/v1/models", headers={"Origin": FRONTEND})
    assert answer.status_code == 200
    assert "access-control-allow-origin" not in answer.headers


@pytest.fixture(scope="module")
def cors_server(keyed_server):
    return keyed_server


def test_an_allowed_origin_gets_its_preflight_and_headers(cors_server):
    preflight = httpx.options(
        f"{cors_server.url}/v1/completions",
        headers={
            "Origin": FRONTEND,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        },
    )
    assert preflight.status_code == 200  # answered before the API key check: a preflight carries no key
    assert preflight.headers["access-control-allow-origin"] == FRONTEND
    assert "POST" in preflight.headers["access-control-allow-methods"]
    answer = httpx.get(f"{cors_server.url}/v1/models", headers={"Origin": FRONTEND, "Authorization": "Bearer secret"})
    assert answer.status_code == 200
    assert answer.headers["access-control-allow-origin"] == FRONTEND
    assert "x-request-id" in answer.headers["access-control-expose-headers"].lower()


def test_other_origins_get_no_cors_headers(cors_server):
    other = "http://elsewhere.example"
    preflight = httpx.options(
        f"{cors_server.url}/v1/completions", headers={"Origin": other, "Access-Control-Request-Method": "POST"}
    )
    assert "access-control-allow-origin" not in preflight.headers
    answer = httpx.get(f"{cors_server.url}/v1/models", headers={"Origin": other, "Authorization": "Bearer secret"})
    assert "access-control-allow-origin" not in answer.headers
