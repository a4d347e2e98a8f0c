"""Start-up: the model loaded and the engine started in the background, so the port opens at once and /health
can tell "starting" from "dead"."""

import logging
from collections.abc import Callable

from server.engine.engine import Engine
from server.engine.errors import ModelLoadError
from server.engine.loader import ModelSpec, load
from server.engine.memory import kv_budget_bytes
from server.engine.timings import TokenTimings
from server.settings import Settings
from server.state import ServerState

log = logging.getLogger(__name__)


def model_spec(settings: Settings) -> ModelSpec:
    return ModelSpec(
        model=settings.model,
        adapter=settings.adapter,
        merge=settings.merge,
        device=settings.device,
        dtype=settings.dtype,
        served_name=settings.served_model_name,
        cache_dir=settings.cache_dir,
    )


def start_engine(state: ServerState, timings: TokenTimings, on_failure: Callable[[str], None] | None) -> None:
    """Loads the model, starts the engine and hands it to `state`; a model that cannot be loaded is logged and
    reported to `on_failure`."""
    settings = state.settings
    try:
        loaded = load(model_spec(settings))
        engine = Engine(
            loaded,
            max_running=settings.max_running,
            prefix_cache_mb=settings.prefix_cache_mb,
            kv_budget_bytes=settings.kv_cache_mb * 2**20
            if settings.kv_cache_mb
            else kv_budget_bytes(loaded.device, settings.memory_fraction),
            prefill_chunk=settings.prefill_chunk,
            request_timeout=settings.request_timeout or None,
            timings=timings,
            log_content=settings.log_content,
            decode_mode=settings.decode_mode,
        )
    except ModelLoadError as error:
        log.error("%s", error)
        if on_failure is not None:
            on_failure(str(error))
        return
    engine.start()
    state.engine = engine
    budget = engine.kv_budget
    log.info(
        "serving %s; KV cache budget %d tokens (%.0f MiB), prefix cache at most %d tokens",
        state.model_name,
        budget.tokens,
        budget.tokens * budget.bytes_per_token / 2**20,
        budget.prefix_tokens,
    )
