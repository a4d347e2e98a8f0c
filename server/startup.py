"""Start-up: the engine process started and its model loaded in the background, so the port opens at once and
/health can tell "starting" from "dead"."""

import logging
from collections.abc import Callable

from server.engine.engine_process import EngineOptions, EngineProcess
from server.engine.errors import ModelLoadError
from server.engine.loader import ModelSpec
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
    options = EngineOptions(
        max_running=settings.max_running,
        prefix_cache_mb=settings.prefix_cache_mb,
        kv_cache_mb=settings.kv_cache_mb,
        memory_fraction=settings.memory_fraction,
        prefill_chunk=settings.prefill_chunk,
        request_timeout=settings.request_timeout or None,
        log_content=settings.log_content,
        decode_mode=settings.decode_mode,
        log_level=settings.log_level,
    )
    engine = EngineProcess(model_spec(settings), options, timings)
    try:
        engine.start()
    except ModelLoadError as error:
        log.error("%s", error)
        if on_failure is not None:
            on_failure(str(error))
        return
    state.engine = engine
    budget = engine.kv_budget
    log.info(
        "serving %s; KV cache budget %d tokens (%.0f MiB), prefix cache at most %d tokens",
        state.model_name,
        budget.tokens,
        budget.tokens * budget.bytes_per_token / 2**20,
        budget.prefix_tokens,
    )
