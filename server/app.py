"""The FastAPI application: middleware, routes and error handlers; the model loads in the background (see
server/startup.py)."""

import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from server.engine.options import served_name
from server.engine.service import ServedEngine
from server.errors import install_error_handlers
from server.metrics import Metrics
from server.middleware.auth import ApiKey
from server.middleware.draining import Draining
from server.middleware.hosts import HostCheck, default_allowed_hosts
from server.middleware.limits import BodyLimit
from server.middleware.request_log import RequestLog
from server.middleware.unexpected_errors import UnexpectedErrors
from server.routes import chat, completions, health, kobold, llamacpp, models, tokens
from server.routes import metrics as metrics_route
from server.routes.web import install_web
from server.sampling_preset import load_preset
from server.settings import Settings
from server.startup import model_spec, start_engine
from server.state import ServerState


def create_app(
    settings: Settings,
    on_engine_failure: Callable[[str], None] | None = None,
    engine: ServedEngine | None = None,
) -> FastAPI:
    """Raises PresetError for an unusable sampling preset file, ModelLoadError for a model the settings name
    wrong. `on_engine_failure`: told when the model cannot be loaded, or the engine died and will not be restarted.
    `engine`: serve this one (already started) instead of starting the engine process the settings describe."""
    state = ServerState(
        settings=settings,
        model_name=served_name(model_spec(settings)),
        sampling_preset=load_preset(settings.sampling_preset, settings.dry_breakers_always),
        engine=engine,
    )
    metrics = Metrics(lambda: state.engine)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if engine is None:
            # A daemon thread, so that stopping during a slow first load does not wait for it.
            loader = threading.Thread(
                target=start_engine, args=(state, metrics, on_engine_failure), name="model-loader", daemon=True
            )
            loader.start()
        yield
        if state.engine is not None:
            state.engine.shutdown()

    app = FastAPI(title="rpserve", summary="OpenAI-compatible server for roleplay models", lifespan=lifespan)
    app.state.server = state
    app.state.metrics = metrics
    install_error_handlers(app)
    # Each one added wraps those before it: the last is the outermost.
    if settings.api_key:
        app.add_middleware(ApiKey, api_key=settings.api_key)
    app.add_middleware(BodyLimit, max_body_mb=settings.max_body_mb)
    app.add_middleware(Draining, state=state)
    if settings.cors_origins:
        # Outside the API key: a browser's preflight carries no credentials.
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["*"],
            allow_headers=["*"],
            expose_headers=["X-Request-ID", "X-Ignored-Fields", "X-Overridden-Fields"],
            allow_credentials=False,
        )
    app.add_middleware(HostCheck, allowed_hosts=settings.allowed_hosts or default_allowed_hosts(settings.host))
    app.add_middleware(UnexpectedErrors)
    # Outermost, so it logs and counts refusals by the others too.
    app.add_middleware(RequestLog, requests=metrics.requests)
    for module in (health, metrics_route, models, tokens, completions, chat, llamacpp, kobold):
        app.include_router(module.router)
    if settings.web:
        install_web(app)
    return app
