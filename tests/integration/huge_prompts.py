"""A running stream's gaps while huge prompts arrive: shared by the test (tests/integration/test_event_loop.py)
and the benchmark (bench/stalls.py). Each prompt is refused with 400 (longer than the context); what matters is
how long the event loop that serves the stream was kept from it."""

import itertools
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx

from tests.integration.endless import endless_request


def huge_prompt(characters: int) -> str:
    """Roleplay-like text of that length."""
    line = '::::user:Anon: "The lighthouse keeper counted every ship," said Anon.\n\n'
    return (line * (characters // len(line) + 1))[:characters]


def gaps_while_huge_prompts_arrive(url: str, sizes: list[int], warm_events: int = 20) -> dict:
    """Streams one endless request; after `warm_events` events, posts one prompt of each size at once, and
    returns the stream's median gap before them, its largest gap while they were being answered, and their
    statuses."""
    stamps: list[float] = []
    started = threading.Event()
    done = threading.Event()

    def read() -> None:
        with (
            httpx.Client(base_url=url, timeout=120) as client,
            client.stream("POST", "/v1/completions", json=endless_request(stream=True)) as response,
        ):
            for line in response.iter_lines():
                if line.startswith("data:"):
                    stamps.append(time.perf_counter())
                    if len(stamps) == warm_events:
                        started.set()
                if done.is_set() and len(stamps) > warm_events + 5:
                    return

    reader = threading.Thread(target=read)
    reader.start()
    started.wait(timeout=300)
    bodies = [{"prompt": huge_prompt(size), "max_tokens": 8} for size in sizes]
    burst_start = time.perf_counter()
    with httpx.Client(base_url=url, timeout=120) as client, ThreadPoolExecutor(len(bodies)) as pool:
        statuses = list(pool.map(lambda body: client.post("/v1/completions", json=body).status_code, bodies))
    burst_end = time.perf_counter()
    done.set()
    reader.join(timeout=300)
    before = [b - a for a, b in itertools.pairwise(stamps[:warm_events])]
    during = [b - a for a, b in itertools.pairwise(stamps) if b >= burst_start and a <= burst_end]
    return {
        "median_gap_s": statistics.median(before),
        "largest_gap_during_s": max(during, default=0.0),
        "burst_s": burst_end - burst_start,
        "statuses": statuses,
    }
