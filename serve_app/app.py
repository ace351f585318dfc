"""Application builder: ``serve_app.app:build_app`` is the one import path for `serve run`,
YAML configs (``import_path`` + ``args``) and KubeRay's ``serveConfigV2``.

Each deployment derives its own options from the typed ``LipserveArgs``
(``ingress.deployment_options``, ``pipeline_server.deployment_options``); the builder only composes.
"""

from __future__ import annotations

from typing import Any

from ray import serve
from ray.serve import Application

from serve_app import ingress, pipeline_server
from serve_app.config import LipserveArgs


def build_app(args: LipserveArgs | dict[str, Any] | None = None) -> Application:
    args = LipserveArgs.from_any(args)
    config = args.model_dump()  # plain data crosses to the replicas
    pipeline = serve.deployment(pipeline_server.PipelineServer,
                                **pipeline_server.deployment_options(args)).bind(config)
    ingress_cls = serve.ingress(ingress.make_api)(ingress.IngressServer)
    return serve.deployment(ingress_cls, **ingress.deployment_options(args)).bind(config, pipeline)
