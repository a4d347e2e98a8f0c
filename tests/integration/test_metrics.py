"""`GET /metrics` in Prometheus text format: what the server did, counted."""

import re

from tests.integration.sse import stream


def sample(text: str, name: str, labels: str = "", *, missing: float | None = None) -> float:
    pattern = re.escape(name) + (r"\{" + re.escape(labels) + r"\}" if labels else "") + r" ([0-9.e+-]+)$"
    found = re.search(pattern, text, re.MULTILINE)
    if found is None and missing is not None:
        return missing
    assert found, f"{name}{{{labels}}} missing"
    return float(found.group(1))


def test_metrics_count_requests_tokens_and_latencies(client, server):
    before = client.get("/metrics").text
    ok = client.post("/v1/completions", json={"prompt": "Hello there", "max_tokens": 6, "seed": 3})
    assert ok.status_code == 200
    stream(client, "/v1/completions", {"prompt": "Hello again", "max_tokens": 5, "seed": 3})
    assert client.post("/v1/completions", json={"prompt": "x", "temperature": -1}).status_code == 400
    server.settled_health()
    after = client.get("/metrics")
    assert after.headers["content-type"].startswith("text/plain")
    text = after.text

    def grew(name: str, labels: str = "") -> float:
        return sample(text, name, labels) - sample(before, name, labels, missing=0.0)

    route = 'route="/v1/completions",status="200"'
    assert grew("rpserve_requests_total", route) == 2
    assert sample(text, "rpserve_requests_total", 'route="/v1/completions",status="400"') >= 1
    assert grew("rpserve_generated_tokens_total") >= 11
    assert grew("rpserve_prompt_tokens_total") > 0
    assert grew("rpserve_time_to_first_token_seconds_count") == 2
    assert grew("rpserve_inter_token_latency_seconds_count") >= 9
    assert sample(text, "rpserve_requests_running") == 0
    assert sample(text, "rpserve_requests_waiting") == 0
    assert 0 <= sample(text, "rpserve_prefix_cache_hit_ratio") <= 1
    assert sample(text, "rpserve_kv_cache_bytes", 'use="running"') == 0
    assert sample(text, "rpserve_kv_cache_bytes", 'use="prefix_cache"') > 0
    assert sample(text, "process_resident_memory_bytes") > 0
    assert sample(text, "rpserve_engine_resident_memory_bytes") > 0
    assert grew("rpserve_engine_steps_total") >= 11
    assert grew("rpserve_engine_seconds_total", 'part="forward"') > 0
    assert grew("rpserve_engine_seconds_total", 'part="sampling"') > 0
    # Unknown paths are counted under one label, not one series per path.
    client.get("/no/such/path/123")
    assert 'route="unmatched",status="404"' in client.get("/metrics").text
