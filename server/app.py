"""The FastAPI application: routes, error handlers, and the model loaded in the background.

The port opens at once and /health answers 503 until the model is ready, so orchestrators can tell "starting"
from "dead".
"""

import logging
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI

from server.auth import ApiKey
from server.draining import Draining
from server.engine.engine import Engine
from server.engine.errors import ModelLoadError
from server.engine.loader import load, served_name
from server.engine.memory import kv_budget_bytes
from server.errors import install_error_handlers
from server.limits import BodyLimit
from server.metrics import Metrics
from server.request_log import RequestLog
from server.routes import chat, completions, health, kobold, llamacpp, models, tokens
from server.routes import metrics as metrics_route
from server.sampling_defaults import sampling_defaults
from server.settings import Settings
from server.state import ServerState

log = logging.getLogger(__name__)


def create_app(settings: Settings, on_load_failure: Callable[[str], None] | None = None) -> FastAPI:
    """Raises PresetError for an unusable sampling preset file."""
    state = ServerState(
        settings=settings, model_name=served_name(settings), sampling_defaults=sampling_defaults(settings)
    )
    metrics = Metrics(lambda: state.engine)

    def load_engine() -> None:
        try:
            loaded = load(settings)
            engine = Engine(
                loaded,
                max_running=settings.max_running,
                prefix_cache_mb=settings.prefix_cache_mb,
                kv_budget_bytes=settings.kv_cache_mb * 2**20
                if settings.kv_cache_mb
                else kv_budget_bytes(loaded.device, settings.memory_fraction),
                prefill_chunk=settings.prefill_chunk,
                request_timeout=settings.request_timeout or None,
                timings=metrics,
                log_content=settings.log_content,
                static_cache=settings.static_cache,
            )
        except ModelLoadError as error:
            log.error("%s", error)
            if on_load_failure is not None:
                on_load_failure(str(error))
            return
        engine.start()
        state.engine = engine
        log.info(
            "serving %s; KV cache budget %d tokens (%.0f MiB), prefix cache at most %d tokens",
            state.model_name,
            engine.kv_budget_tokens,
            engine.kv_budget_tokens * engine.kv_bytes_per_token / 2**20,
            engine.prefix_budget_tokens,
        )

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        # A daemon thread, so that stopping during a slow first load does not wait for it.
        threading.Thread(target=load_engine, name="model-loader", daemon=True).start()
        yield
        if state.engine is not None:
            state.engine.shutdown()

    app = FastAPI(title="rpserve", summary="OpenAI-compatible server for roleplay models", lifespan=lifespan)
    app.state.server = state
    app.state.metrics = metrics
    install_error_handlers(app)
    if settings.api_key:
        app.add_middleware(ApiKey, api_key=settings.api_key)
    app.add_middleware(BodyLimit, max_body_mb=settings.max_body_mb)
    app.add_middleware(Draining, state=state)
    # Added last: outermost, so it sees refusals by the others too.
    app.add_middleware(RequestLog, requests=metrics.requests)
    for module in (health, metrics_route, models, tokens, completions, chat, llamacpp, kobold):
        app.include_router(module.router)
    return app
