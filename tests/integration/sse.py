"""Reading server-sent events the way SillyTavern does: split on blank lines, read the `data:` lines."""

import json
from collections.abc import Iterator

import httpx


def data_events(lines: Iterator[str]) -> Iterator[dict | str]:
    for line in lines:
        if line.startswith("data:"):
            payload = line.removeprefix("data:").strip()
            yield payload if payload == "[DONE]" else json.loads(payload)


def stream(client: httpx.Client, path: str, body: dict) -> list[dict | str]:
    with client.stream("POST", path, json={**body, "stream": True}) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        return list(data_events(response.iter_lines()))


def streamed_text(events: list[dict | str]) -> str:
    return "".join(event["choices"][0]["text"] for event in events if isinstance(event, dict) and event["choices"])
