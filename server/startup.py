"""Start-up: the engine process started and its model loaded in the background, so the port opens at once and
/health can tell "starting" from "dead"."""

import logging
from collections.abc import Callable

from server.engine.client import EngineClient
from server.engine.options import EngineOptions, ModelLoadError, ModelSpec
from server.engine.stats import TokenTimings
from server.settings import Settings
from server.state import ServerState

log = logging.getLogger(__name__)


def model_spec(settings: Settings) -> ModelSpec:
    """Raises ModelLoadError for a device that is not spelled as one."""
    return ModelSpec(
        model=settings.model,
        adapter=settings.adapter,
        merge=settings.merge,
        device=settings.device,
        dtype=settings.dtype,
        served_name=settings.served_model_name,
        cache_dir=settings.cache_dir,
        quantization=settings.quantization,
        int4_group_size=settings.int4_group_size,
    )


def engine_options(settings: Settings) -> EngineOptions:
    return EngineOptions(
        model=model_spec(settings),
        max_running=settings.max_running,
        prefix_cache_mb=settings.prefix_cache_mb,
        kv_cache_mb=settings.kv_cache_mb,
        memory_fraction=settings.memory_fraction,
        prefill_chunk=settings.prefill_chunk,
        max_model_len=settings.max_model_len,
        request_timeout=settings.request_timeout or None,
        log_content=settings.log_content,
        decode_mode=settings.decode_mode,
        packed_weights=settings.cpu_weights == "packed",
        cpu_kernels=settings.compile == "auto",
        kv_cache_dtype=settings.kv_cache_dtype,
        log_level=settings.log_level,
    )


def start_engine(state: ServerState, timings: TokenTimings, on_failure: Callable[[str], None] | None) -> None:
    """Loads the model, starts the engine and hands it to `state`. A model that cannot be loaded, or an engine
    that died and will not be restarted, is reported to `on_failure`."""
    engine = EngineClient(engine_options(state.settings), timings, on_fatal=on_failure)
    try:
        engine.start()
    except ModelLoadError as error:
        log.error("%s", error)
        if on_failure is not None:
            on_failure(str(error))
        return
    state.engine = engine
    log.info(
        "serving %s; %s; prefix cache at most %d tokens",
        state.model_name,
        engine.memory_plan.summary(),
        engine.kv_budget.prefix_tokens,
    )
