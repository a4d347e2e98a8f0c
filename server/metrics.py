"""Prometheus metrics at `GET /metrics`: requests by route and status, the engine's load and token counters,
time to first token and inter-token latency, prefix-cache hit ratio and KV-cache usage, and the process's own
memory and CPU. Each app has its own registry, so several servers can live in one process (tests)."""

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from server.engine.service import ServedEngine

# From a fast GPU step (a few ms) to a long CPU prefill (tens of seconds).
_LATENCY_BUCKETS = (0.005, 0.01, 0.02, 0.04, 0.08, 0.15, 0.3, 0.6, 1.2, 2.5, 5, 10, 20, 40, 80)


class Metrics:
    def __init__(self, engine: Callable[[], ServedEngine | None]) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "rpserve_requests",
            "HTTP requests answered, by route and status.",
            ["route", "status"],
            registry=self.registry,
        )
        self._first_token = Histogram(
            "rpserve_time_to_first_token_seconds",
            "From a request's arrival in the engine to its first token.",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self._token_gap = Histogram(
            "rpserve_inter_token_latency_seconds",
            "Between two consecutive tokens of one request.",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        ProcessCollector(registry=self.registry)
        self.registry.register(_EngineCollector(engine))

    def first_token(self, seconds: float) -> None:
        self._first_token.observe(seconds)

    def token_gap(self, seconds: float) -> None:
        self._token_gap.observe(seconds)


class _EngineCollector(Collector):
    """Reads the engine's counters at scrape time: nothing to update on the hot path."""

    def __init__(self, engine: Callable[[], ServedEngine | None]) -> None:
        self._engine = engine

    def collect(self) -> Iterator[Metric]:
        engine = self._engine()
        if engine is None:
            return
        stats = engine.stats
        yield GaugeMetricFamily("rpserve_requests_running", "Requests generating now.", value=stats.running)
        yield GaugeMetricFamily("rpserve_requests_waiting", "Requests queued for a free slot.", value=stats.waiting)
        yield CounterMetricFamily(
            "rpserve_prompt_tokens", "Prompt tokens of the requests the engine admitted.", value=stats.prompt_tokens
        )
        yield CounterMetricFamily(
            "rpserve_prefilled_tokens", "Prompt tokens run through the model.", value=stats.prefilled_tokens
        )
        yield CounterMetricFamily(
            "rpserve_reused_prompt_tokens", "Prompt tokens taken from the prefix cache.", value=stats.reused_tokens
        )
        yield CounterMetricFamily(
            "rpserve_shifted_prompt_tokens",
            "Prompt tokens taken from the prefix cache from other positions, their keys shifted (cache reuse).",
            value=stats.shifted_tokens,
        )
        yield CounterMetricFamily("rpserve_generated_tokens", "Tokens generated.", value=stats.generated_tokens)
        yield CounterMetricFamily(
            "rpserve_failed_requests", "Requests ended by a fault in the engine.", value=stats.failed_requests
        )
        yield CounterMetricFamily(
            "rpserve_timed_out_requests", "Requests ended by --request-timeout.", value=stats.timed_out_requests
        )
        yield CounterMetricFamily("rpserve_engine_steps", "Engine steps run.", value=stats.steps)
        yield CounterMetricFamily(
            "rpserve_engine_mixed_steps",
            "Engine steps whose decode rows and prompt chunks ran as one forward.",
            value=stats.mixed_steps,
        )
        yield CounterMetricFamily(
            "rpserve_engine_restarts", "Engine processes started again after one died.", value=stats.restarts
        )
        if (resident := engine.resident_bytes()) is not None:
            yield GaugeMetricFamily(
                "rpserve_engine_resident_memory_bytes",
                "Resident memory of the engine's process (process_resident_memory_bytes is the HTTP server's).",
                value=resident,
            )
        seconds = CounterMetricFamily(
            "rpserve_engine_seconds",
            "The engine's host time in its steps, by part: the model's forwards, the sampling chain, and the rest "
            "(scheduling, detokenizing, stop scanning).",
            labels=["part"],
        )
        seconds.add_metric(["forward"], stats.forward_seconds)
        seconds.add_metric(["sampling"], stats.sampling_seconds)
        seconds.add_metric(["other"], stats.step_seconds - stats.forward_seconds - stats.sampling_seconds)
        yield seconds
        looked_up = stats.prefilled_tokens + stats.reused_tokens
        yield GaugeMetricFamily(
            "rpserve_prefix_cache_hit_ratio",
            "Share of prompt tokens served from the prefix cache since start.",
            value=stats.reused_tokens / looked_up if looked_up else 0.0,
        )
        budget = engine.kv_budget
        usage = GaugeMetricFamily("rpserve_kv_cache_bytes", "KV cache held, by use.", labels=["use"])
        usage.add_metric(["running"], stats.batch_cache_tokens * budget.bytes_per_token)
        usage.add_metric(["prefix_cache"], stats.prefix_cache_tokens * budget.bytes_per_token)
        yield usage
        yield GaugeMetricFamily(
            "rpserve_kv_cache_budget_bytes",
            "Memory for KV caches, running requests and prefix cache together.",
            value=budget.tokens * budget.bytes_per_token,
        )
        yield GaugeMetricFamily(
            "rpserve_prefix_cache_budget_bytes",
            "Memory the prefix cache may hold at most (--prefix-cache-mb, within the KV budget).",
            value=budget.prefix_tokens * budget.bytes_per_token,
        )
