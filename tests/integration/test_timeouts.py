"""`--request-timeout`: a request past its deadline ends with what it has generated (finish reason "length"), or
with a 503 to retry when it has generated nothing yet; either way its slot and cache are freed."""

import asyncio
import time

import httpx

from sampling import SamplingParams
from server.engine.engine import Engine
from server.engine.model.loader import load
from server.engine.options import EngineOptions, ModelSpec
from server.engine.request import GenerationRequest
from tests.integration.endless import endless_request
from tests.integration.server_process import ServerProcess
from tests.integration.sse import data_events


def test_a_running_request_ends_at_the_timeout_with_its_text():
    server = ServerProcess("--request-timeout", "2").wait_ready()
    try:
        started = time.monotonic()
        body = endless_request(max_tokens=5000, stream=True)
        with httpx.stream("POST", f"{server.url}/v1/completions", json=body, timeout=60) as response:
            events = [e for e in data_events(response.iter_lines()) if isinstance(e, dict)]
        assert 2 <= time.monotonic() - started < 10
        assert "".join(e["choices"][0]["text"] for e in events if e["choices"])
        assert events[-1]["choices"][0]["finish_reason"] == "length"
        health = server.settled_health()
        assert (health["running"], health["running_caches"], health["timed_out_requests"]) == (0, 0, 1)
        assert "rpserve_timed_out_requests_total 1.0" in httpx.get(f"{server.url}/metrics").text
    finally:
        server.stop()


def test_a_request_that_waited_past_its_deadline_gets_503():
    engine = Engine(load(ModelSpec()), EngineOptions(max_running=1, kv_cache_mb=1024, request_timeout=0.05))
    request = GenerationRequest(
        sample_id="late", prompt_ids=(1, 2, 3), params=SamplingParams(), stop_strings=(), max_tokens=5
    )

    async def submit_before_the_engine_runs() -> list:
        (handle,) = engine.submit([request])
        await asyncio.sleep(0.2)
        engine.start()
        return [output async for output in handle]

    try:
        outputs = asyncio.run(submit_before_the_engine_runs())
    finally:
        engine.shutdown()
    assert (outputs[-1].finish_reason, outputs[-1].error.retryable, outputs[-1].completion_tokens) == ("error", True, 0)
    assert "timed out" in outputs[-1].error.message
    assert engine.in_flight == 0
