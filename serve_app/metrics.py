"""Service metrics, exported through Ray's Prometheus endpoint (``ray.serve.metrics``)."""

from __future__ import annotations

from ray.serve import metrics

_STAGE_BOUNDARIES = [0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600]


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

    def job_finished(self, status: str, error_code: str | None) -> None:
        self.finished.inc(tags={"status": status, "error_code": error_code or "none"})

    def stage_seconds(self, stage: str, seconds: float) -> None:
        self.stage_latency.observe(seconds, tags={"stage": stage})

    def frames_generated(self, n: int) -> None:
        self.frames.inc(n)
