"""Application builder: ``serve_app.app:build_app`` is the one import path for `serve run`,
YAML configs (``import_path`` + ``args``) and KubeRay's ``serveConfigV2``.

Every deployment option is derived here from the typed ``LipserveArgs``, in one place.
"""

from __future__ import annotations

from typing import Any

from ray import serve
from ray.serve import Application

from serve_app.config import LipserveArgs
from serve_app.ingress import IngressServer, build_api
from serve_app.pipeline_server import PipelineServer


def pipeline_options(args: LipserveArgs) -> dict[str, Any]:
    p = args.pipeline
    a = p.autoscaling
    autoscaling = {
        "min_replicas": a.min_replicas,
        "max_replicas": a.max_replicas,
        "target_ongoing_requests": a.target_ongoing_requests,
        "upscale_delay_s": a.upscale_delay_s,
        "downscale_delay_s": a.downscale_delay_s,
        "look_back_period_s": a.look_back_period_s,
    }
    if a.initial_replicas is not None:
        autoscaling["initial_replicas"] = a.initial_replicas
    return {
        "name": "PipelineServer",
        "max_ongoing_requests": p.max_ongoing_requests,
        "max_queued_requests": p.max_queued_requests,
        "autoscaling_config": autoscaling,
        "graceful_shutdown_timeout_s": p.graceful_shutdown_timeout_s,
        "health_check_period_s": p.health_check_period_s,
        "health_check_timeout_s": p.health_check_timeout_s,
        # The replica itself only orchestrates; the heavy work runs in its actors.
        "ray_actor_options": {"num_cpus": p.num_cpus},
    }


def ingress_options(args: LipserveArgs) -> dict[str, Any]:
    i = args.ingress
    return {
        "name": "Ingress",
        "num_replicas": i.num_replicas,
        "max_ongoing_requests": i.max_ongoing_requests,
        "max_queued_requests": i.max_queued_requests,
        "ray_actor_options": {"num_cpus": i.num_cpus},
    }


def build_app(args: LipserveArgs | dict[str, Any] | None = None) -> Application:
    args = LipserveArgs.from_any(args)
    config = args.model_dump()  # plain data crosses to the replicas
    pipeline = serve.deployment(PipelineServer, **pipeline_options(args)).bind(config)
    ingress_cls = serve.ingress(build_api)(IngressServer)
    return serve.deployment(ingress_cls, **ingress_options(args)).bind(config, pipeline)
