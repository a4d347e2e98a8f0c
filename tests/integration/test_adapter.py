"""Merged and unmerged adapters are the same model: the same greedy tokens."""

import httpx

from tests.integration.server_process import ServerProcess

PROMPTS = ["The lighthouse keeper looked at the sea and said", '::::user:Anon: "Hello," said Anon.\n\n::::assistant:']


def greedy(url: str, prompt: str) -> str:
    body = {"prompt": prompt, "max_tokens": 24, "temperature": 0, "stop": []}
    response = httpx.post(f"{url}/v1/completions", json=body, timeout=120)
    return response.json()["choices"][0]["text"]


def test_unmerged_adapter_gives_the_merged_greedy_tokens(server, adapter_folder):
    unmerged = ServerProcess("--adapter", str(adapter_folder), "--no-merge").wait_ready()
    try:
        assert [greedy(unmerged.url, p) for p in PROMPTS] == [greedy(server.url, p) for p in PROMPTS]
    finally:
        unmerged.stop()
