"""Service metrics, exported through Ray's Prometheus endpoint (``ray.serve.metrics``)."""

from __future__ import annotations

from ray.serve import metrics

_STAGE_BOUNDARIES = [0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600]
_WAIT_BOUNDARIES = [0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600]
_ATTEMPT_BOUNDARIES = [1, 2, 3, 4, 5, 8]


class IngressMetrics:
    def __init__(self):
        self.submitted = metrics.Counter("lipserve_jobs_submitted", description="Jobs accepted by the API.")
        self.rejected = metrics.Counter("lipserve_jobs_rejected", description="Submissions refused.",
                                        tag_keys=("reason",))
        self.queue_depth = metrics.Gauge("lipserve_queue_depth", description="Jobs waiting to run.")


class PipelineMetrics:
    def __init__(self):
        self.finished = metrics.Counter("lipserve_jobs_finished", description="Jobs by final state and error code.",
                                        tag_keys=("status", "error_code"))
        self.stage_latency = metrics.Histogram("lipserve_stage_seconds", description="Stage latency per job.",
                                               boundaries=_STAGE_BOUNDARIES, tag_keys=("stage",))
        self.frames = metrics.Counter("lipserve_frames_generated", description="Output frames rendered.")
        self.fps = metrics.Gauge("lipserve_generated_fps", description="Frames per second of the last job.")
        self.queue_wait = metrics.Histogram("lipserve_queue_wait_seconds", boundaries=_WAIT_BOUNDARIES,
                                            description="Seconds a job waited to be claimed (per attempt).")
        self.attempts = metrics.Histogram("lipserve_job_attempts", boundaries=_ATTEMPT_BOUNDARIES,
                                          description="Attempts a job took, when it succeeded or failed.")
        self.stage_fps = metrics.Gauge("lipserve_stage_fps", tag_keys=("stage",),
                                       description="Output frames per second of a stage, last job.")
        self.generator_memory = metrics.Gauge(
            "lipserve_generator_memory_bytes", tag_keys=("actor", "kind"),
            description="Generator memory: peak CUDA memory (kind=cuda_peak) or peak RSS on CPU (kind=rss).")
        self.gpu_utilization = metrics.Gauge("lipserve_gpu_utilization", tag_keys=("actor", "gpu"),
                                             description="GPU utilisation 0..1 of a generator actor's GPU.")
        self.gpu_memory_used = metrics.Gauge("lipserve_gpu_memory_used_bytes", tag_keys=("actor", "gpu"),
                                             description="Memory used on a generator actor's GPU.")
        self.gpu_memory_total = metrics.Gauge("lipserve_gpu_memory_total_bytes", tag_keys=("actor", "gpu"),
                                              description="Memory of a generator actor's GPU.")
        self.disk_free = metrics.Gauge("lipserve_disk_free_bytes", tag_keys=("path",),
                                       description="Free bytes on the storage volume.")
        self.disk_total = metrics.Gauge("lipserve_disk_total_bytes", tag_keys=("path",),
                                        description="Size of the storage volume.")
        self.last_progress = metrics.Gauge(
            "lipserve_job_last_progress_timestamp",
            description="Oldest last-progress time (unix s) of this replica's running jobs; now when idle.")

    def job_finished(self, status: str, error_code: str | None) -> None:
        self.finished.inc(tags={"status": status, "error_code": error_code or "none"})

    def stage_seconds(self, stage: str, seconds: float) -> None:
        self.stage_latency.observe(seconds, tags={"stage": stage})

    def frames_generated(self, n: int) -> None:
        self.frames.inc(n)

    def generator(self, res: dict) -> None:
        """A ``GeneratorActor.resources()`` sample."""
        actor = res["actor"]
        self.generator_memory.set(res["memory_bytes"], tags={"actor": actor, "kind": res["memory_kind"]})
        for g in res.get("gpus", ()):
            tags = {"actor": actor, "gpu": g["gpu"]}
            self.gpu_utilization.set(g["utilization"], tags=tags)
            self.gpu_memory_used.set(g["memory_used_bytes"], tags=tags)
            self.gpu_memory_total.set(g["memory_total_bytes"], tags=tags)

    def disk(self, path: str, free: int, total: int) -> None:
        self.disk_free.set(free, tags={"path": path})
        self.disk_total.set(total, tags={"path": path})
