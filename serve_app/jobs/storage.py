"""Where a job's files live under ``storage_dir`` (a shared volume on a multi-node cluster).

    storage_dir/
      jobs.sqlite3                 durable job records (serve_app/jobs/sqlite_store.py)
      avatars/<key>/               prepared templates, shared by all jobs (actors/avatar.py)
      registered/<tenant>/<id>.<ext> templates registered once through POST /v1/avatars
      jobs/<id>/inputs/            uploaded or fetched inputs of one job
      jobs/<id>/segments/          encoded segments of the running attempt (reused by a retry)
      results/<id>.mp4             finished videos
      hls/<id>/                    the live HLS stream (actors/media/hls.py): kept with the result
      warmup/                      a replica's warm-up job while its constructor runs (removed after)
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path


class Storage:
    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        for sub in ("avatars", "registered", "jobs", "results", "hls"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)

    @property
    def avatar_cache_dir(self) -> Path:
        return self.root / "avatars"

    def registered_dir(self, tenant: str | None = None) -> Path:
        if tenant is None:
            return self.root / "registered"
        d = self.root / "registered" / tenant
        d.mkdir(parents=True, exist_ok=True)
        return d

    def inputs_dir(self, job_id: str) -> Path:
        d = self.root / "jobs" / job_id / "inputs"
        d.mkdir(parents=True, exist_ok=True)
        return d

    def segments_dir(self, job_id: str) -> Path:
        return self.root / "jobs" / job_id / "segments"

    def result_path(self, job_id: str) -> Path:
        return self.root / "results" / f"{job_id}.mp4"

    def hls_dir(self, job_id: str) -> Path:
        """The live stream of a job. Outside ``jobs/<id>`` on purpose: a player still reading it when
        the job succeeds keeps working; it goes with the job when the job fails or is cancelled."""
        return self.root / "hls" / job_id

    def remove_live_stream(self, job_id: str) -> None:
        shutil.rmtree(self.hls_dir(job_id), ignore_errors=True)

    def remove_job_work(self, job_id: str) -> None:
        """Temp files of a job (inputs, segments, a partial result); the finished result stays."""
        shutil.rmtree(self.root / "jobs" / job_id, ignore_errors=True)
        for partial in (self.root / "results").glob(f"{job_id}.mp4.*partial.mp4"):
            partial.unlink(missing_ok=True)
