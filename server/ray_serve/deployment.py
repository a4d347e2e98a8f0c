"""The Ray Serve application: the gateway in front of model replicas, sized and placed from the settings."""

from ray import serve
from ray.serve import Application
from ray.serve.config import RequestRouterConfig

from server.ray_serve.gateway import Gateway
from server.ray_serve.replica import ModelReplica
from server.settings import Settings


def build(settings: Settings) -> Application:
    replicas: dict = (
        {"num_replicas": settings.ray_min_replicas}
        if settings.ray_min_replicas == settings.ray_max_replicas
        else {
            "autoscaling_config": {
                "min_replicas": settings.ray_min_replicas,
                "max_replicas": settings.ray_max_replicas,
                # Scale out when replicas hold more requests than they run at once.
                "target_ongoing_requests": settings.max_running,
            }
        }
    )
    model = serve.deployment(
        ModelReplica,
        name="model",
        ray_actor_options={"num_gpus": settings.ray_gpus_per_replica, "num_cpus": settings.ray_cpus_per_replica},
        max_ongoing_requests=settings.ray_max_ongoing_requests or settings.max_running + settings.max_queued,
        request_router_config=RequestRouterConfig(
            # Ray takes the router's import path, which its own annotation does not admit.
            request_router_class="server.ray_serve.router:ConversationAffinityRouter",  # type: ignore[arg-type]
            request_router_kwargs={"imbalance": settings.max_running},
        ),
        **replicas,
    )
    # The gateway only moves bytes: it reserves no CPU, so that it never keeps a model replica from its node.
    gateway = serve.deployment(Gateway, name="gateway", num_replicas=1, ray_actor_options={"num_cpus": 0})
    # `serve.deployment` called with a class returns a Deployment; its overloads lose that.
    return gateway.bind(model.bind(settings))  # type: ignore[attr-defined]
