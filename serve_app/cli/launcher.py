"""Start the application from a Serve config file: on an existing cluster (RAY_ADDRESS) or on an
embedded local one that starts by itself."""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path
from typing import Any

import yaml

from serve_app.config import PROJECT_ROOT, LipserveArgs


def load_config(path: str | os.PathLike) -> dict[str, Any]:
    p = Path(path)
    if not p.is_absolute() and not p.exists():
        p = Path(PROJECT_ROOT) / p
    with open(p) as f:
        return yaml.safe_load(f)


def app_spec(config: dict[str, Any], overrides: dict[str, Any] | None = None) -> tuple[str, str, LipserveArgs]:
    app = config["applications"][0]
    args = dict(app.get("args") or {})
    args.update(overrides or {})
    return app.get("name", "lipserve"), app.get("route_prefix", "/"), LipserveArgs.model_validate(args)


def start(config: dict[str, Any], overrides: dict[str, Any] | None = None, num_cpus: int | None = None):
    """Connect to (or start) Ray, start Serve's HTTP proxy and deploy the app. Returns (args, port)."""
    import ray
    from ray import serve

    from serve_app.app import build_app

    name, prefix, args = app_spec(config, overrides)
    http = config.get("http_options", {})
    if not ray.is_initialized():
        # RAY_ADDRESS joins a cluster; without it start one of our own ("local"): never attach by
        # accident to whatever other Ray instance happens to run on this machine.
        address = os.environ.get("RAY_ADDRESS") or "local"
        ray.init(address=address, num_cpus=None if address != "local" else num_cpus, include_dashboard=False,
                 log_to_driver=False, ignore_reinit_error=True)
    serve.start(http_options={"host": http.get("host", "127.0.0.1"), "port": http.get("port", 8000)},
                proxy_location=config.get("proxy_location", "HeadOnly"))
    serve.run(build_app(args), name=name, route_prefix=prefix)
    return args, http.get("port", 8000)


def serve_forever(config_path: str) -> None:
    config = load_config(config_path)
    args, port = start(config)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    print(f"lipserve is serving on http://127.0.0.1:{port} (storage {args.storage_dir}); Ctrl-C to stop", flush=True)
    stop.wait()
    from ray import serve

    serve.shutdown()
