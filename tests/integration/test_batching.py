"""Continuous batching through the server: concurrent requests get the tokens they would get alone, a long new
prompt is prefilled in chunks beside the running streams' steps (in one forward with them), and nothing is left
behind."""

import threading
from concurrent.futures import ThreadPoolExecutor

import httpx

from tests.integration.endless import endless_request
from tests.integration.sse import data_events

PROMPTS = [
    "The lighthouse keeper looked at the sea and said",
    '::::user:Anon: "Hello," said Anon.\n\n::::assistant:Greta:',
    "Once upon a time, in a harbour town far to the north,",
]


def greedy(url: str, prompt: str) -> str:
    body = {"prompt": prompt, "max_tokens": 24, "temperature": 0, "stop": []}
    return httpx.post(f"{url}/v1/completions", json=body, timeout=300).json()["choices"][0]["text"]


def test_concurrent_requests_get_the_tokens_they_get_alone(server):
    alone = [greedy(server.url, prompt) for prompt in PROMPTS]
    with ThreadPoolExecutor(len(PROMPTS)) as pool:
        together = list(pool.map(lambda p: greedy(server.url, p), PROMPTS))
    assert together == alone
    health = server.settled_health()
    assert (health["running"], health["waiting"], health["running_caches"]) == (0, 0, 0)


def test_a_long_prompt_is_prefilled_between_the_running_streams_steps(server):
    endless = endless_request(stream=True)
    long_prompt = " ".join(f"The keeper counted ship number {i}." for i in range(160))  # ~1,200: 3 chunks
    progress: dict[str, int] = {}
    with (
        httpx.Client(base_url=server.url, timeout=300) as http,
        http.stream("POST", "/v1/completions", json=endless) as running,
    ):
        events = data_events(running.iter_lines())
        next(events)  # the stream is decoding

        def long_request() -> None:
            before = server.health()
            http.post("/v1/completions", json={"prompt": long_prompt, "max_tokens": 1, "stop": []})
            after = server.health()
            progress["generated"] = after["generated_tokens"] - before["generated_tokens"]
            progress["mixed"] = after["mixed_steps"] - before["mixed_steps"]

        worker = threading.Thread(target=long_request)
        worker.start()
        while worker.is_alive():
            next(events)  # keep reading so the stream is never blocked by its client
        worker.join()
    # With the prompt prefilled in 512-token chunks, the running stream advanced with every chunk, in the same
    # forward (the server runs on the CPU kernels).
    assert progress["generated"] >= 3
    assert progress["mixed"] >= 3
    assert server.settled_health()["running_caches"] == 0
