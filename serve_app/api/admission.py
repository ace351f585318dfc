"""Admission: whether a submission may join the queue, before and after its inputs are read.

* ``admit``: the global queue bound, the tenant's queue bound (429 + Retry-After) and the disk
  watermark (507: free space under ``storage_dir`` below ``retention.min_free_bytes``), checked
  before an upload is read;
* ``check_work``: after the header probes, the work bombs: total work (output frames x output
  pixels) and the avatar cache the template would fill (template frames x crop bytes); fps is
  checked by the template probe (``jobs.max_fps``).
"""

from __future__ import annotations

import math
import shutil

from actors.errors import InsufficientStorageError, InvalidParameterError, QueueFullError
from actors.media.template import TemplateInfo
from serve_app.api.auth import Tenant
from serve_app.config import LipserveArgs
from serve_app.jobs.records import JobStatus

# Side of the square face crops each backend caches per template frame (bytes = side^2 x 3); an
# unknown backend is costed at the largest.
CROP_SIDE = {"default": 160, "mouth_warp": 160, "wav2lip": 96, "musetalk": 256}


def queue_full(message: str, retry_after: int) -> QueueFullError:
    err = QueueFullError(message)
    err.retry_after = retry_after
    return err


class Admission:
    def __init__(self, args: LipserveArgs, store, metrics=None):
        self.args = args
        self.store = store  # AsyncJobStore
        self.metrics = metrics

    def _reject(self, reason: str) -> None:
        if self.metrics:
            self.metrics.rejected.inc(tags={"reason": reason})

    async def admit(self, tenant: Tenant) -> None:
        jobs, retry = self.args.jobs, self.args.jobs.retry_after_s
        free = shutil.disk_usage(self.args.storage_dir).free
        if free < self.args.retention.min_free_bytes:
            self._reject("insufficient_storage")
            raise InsufficientStorageError(
                f"the server is low on storage ({free} bytes free, below the watermark of "
                f"{self.args.retention.min_free_bytes}); retry later")
        queued = await self.store.count(JobStatus.QUEUED)
        if self.metrics:
            self.metrics.queue_depth.set(queued)
        if queued >= jobs.max_queued_jobs:
            self._reject("queue_full")
            raise queue_full(f"{queued} jobs are queued (limit {jobs.max_queued_jobs}); retry in {retry} s", retry)
        limits = self.args.auth.limits_for(tenant.name, is_admin=tenant.is_admin)
        mine = await self.store.count(JobStatus.QUEUED, tenant=tenant.name)
        if mine >= limits.max_queued:
            self._reject("queue_full")
            raise queue_full(f"tenant {tenant.name!r} has {mine} jobs queued (limit {limits.max_queued}); "
                             f"retry in {retry} s", retry)

    def check_priority(self, tenant: Tenant, priority: int) -> int:
        return self.args.auth.limits_for(tenant.name, is_admin=tenant.is_admin).check_priority(priority)

    def check_work(self, audio_s: float | None, template: TemplateInfo, backend: str, video_name: str) -> None:
        jobs = self.args.jobs
        side = CROP_SIDE.get(backend, max(CROP_SIDE.values()))
        cache = template.n_frames * side * side * 3
        if cache > jobs.max_avatar_cache_bytes:
            raise InvalidParameterError(
                f"{video_name}: {template.n_frames} template frames would need {cache} bytes of avatar cache, "
                f"over the limit of {jobs.max_avatar_cache_bytes} (jobs.max_avatar_cache_bytes)", path=video_name)
        if audio_s is None:
            return  # no declared duration: the job's decode enforces max_duration_s
        frames = math.ceil(audio_s * float(template.fps))
        work = frames * template.width * template.height
        if work > jobs.max_work_pixels:
            raise InvalidParameterError(
                f"{video_name}: {frames} output frames of {template.width}x{template.height} are {work:.3g} "
                f"pixels of work, over the limit of {jobs.max_work_pixels:.3g} (jobs.max_work_pixels)",
                path=video_name)
