"""A simulated multi-node cluster on one machine (``ray.cluster_utils.Cluster``): a head with no GPUs
and no CPUs for work (as on KubeRay, ``num-cpus: 0``) and worker nodes that declare one GPU each.
The application is ``configs/gpu.yaml`` adapted to CPU: the default generator on the CPU, no NVENC,
small CPU shares, but the generator's GPU fraction kept, so generator actors (and the pipeline
replicas that own them) can only run on the "GPU" workers. Used by tests/service/test_multinode.py
and bench/bench_cluster.py.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import ray
import yaml
from ray import serve
from ray.cluster_utils import Cluster

from tests.service.harness import free_port

ROOT = Path(__file__).resolve().parents[2]
GPU_CONFIG = ROOT / "configs" / "gpu.yaml"
WORKER_CPUS = 2  # logical CPUs of a worker: fractional actors oversubscribe the real cores


def _merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in over.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def gpu_config_on_cpu(storage: Path, database_url: str, **overrides: Any) -> dict:
    """``configs/gpu.yaml``'s application args, runnable on CPU workers that declare GPUs."""
    (app,) = yaml.safe_load(GPU_CONFIG.read_text())["applications"]
    assert app["args"]["generator"]["num_gpus"] > 0, "gpu.yaml no longer asks for GPUs"
    cpu = {
        "storage_dir": str(storage),
        "job_store": "postgres",
        "database_url": database_url,
        "jobs": {"input_roots": None, "lease_s": 4, "heartbeat_s": 0.5, "retry_backoff_s": 0.2},
        # The default backend on the CPU; num_gpus is kept from gpu.yaml (placement only).
        "generator": {"backend": "default", "checkpoint": None, "device": "cpu", "batch_size": 32,
                      "num_cpus": 0.1},
        "writer": {"pool_size": 2, "num_cpus": 0.1, "prefer_nvenc": False, "segment_frames": 25},
        "pipeline": {"num_cpus": 0.1, "graceful_shutdown_timeout_s": 2, "health_check_period_s": 2,
                     "health_check_timeout_s": 10,
                     "autoscaling": {"min_replicas": 1, "max_replicas": 4, "target_ongoing_requests": 1,
                                     "upscale_delay_s": 0, "downscale_delay_s": 4, "look_back_period_s": 1,
                                     "metrics_interval_s": 0.5}},
        "ingress": {"num_replicas": 1, "num_cpus": 0.1},
    }
    return _merge(_merge(app["args"], cpu), overrides)


class SimulatedCluster:
    """Head (0 CPUs, 0 GPUs) + ``workers`` GPU worker nodes; Serve's HTTP proxy on the head only
    (one machine: proxies on every node would all want the same port)."""

    def __init__(self, workers: int = 2):
        self.cluster = Cluster(initialize_head=True, head_node_args={
            "num_cpus": 0, "num_gpus": 0, "include_dashboard": False})
        self.workers = [self.add_worker() for _ in range(workers)]
        ray.init(address=self.cluster.address, log_to_driver=False)  # this cluster's head, no other
        self.port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": self.port, "location": "HeadOnly"})

    def add_worker(self):
        return self.cluster.add_node(num_cpus=WORKER_CPUS, num_gpus=1, wait=True)

    def remove_worker(self, node) -> None:
        """The node's raylet and every process on it die at once (a lost machine)."""
        self.workers.remove(node)
        self.cluster.remove_node(node, allow_graceful=False)

    def shutdown(self) -> None:
        try:
            serve.shutdown()
        finally:
            ray.shutdown()
            self.cluster.shutdown()


def owner_node(owner: str) -> str:
    """The (prefix of the) Ray node id in a pipeline owner ``pipeline@host:node:pid:tag``."""
    return owner.split("@", 1)[1].split(":")[1]


def running_replicas(app: str = "lipserve") -> int:
    status = serve.status().applications.get(app)
    if status is None:
        return 0
    deployment = status.deployments.get("PipelineServer")
    return int(deployment.replica_states.get("RUNNING", 0)) if deployment else 0
