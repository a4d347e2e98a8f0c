"""The KV-cache budget and what a request is counted for."""

import torch

from server.engine.kv.budget import GENERATION_RESERVE_TOKENS, reservation
from server.engine.kv.memory import kv_budget_bytes


def test_a_request_is_counted_for_its_prompt_and_what_it_may_generate_within_the_reserve():
    assert reservation(100, 300, 8192) == 400
    assert reservation(100, 100_000, 8192) == 100 + GENERATION_RESERVE_TOKENS
    assert reservation(8000, 1000, 8192) == 8192


def test_the_cpu_budget_is_a_share_of_the_memory_available():
    half, most = kv_budget_bytes(torch.device("cpu"), 0.5), kv_budget_bytes(torch.device("cpu"), 0.9)
    assert 0 < half < most
