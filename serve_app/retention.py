"""Retention: results and work files do not pile up forever.

Every ``retention.sweep_interval_s`` the sweeper (run by the ingress replicas; idempotent, so two
replicas sweeping at once do no harm):

* expires terminal jobs that finished more than ``result_ttl_s`` ago: the result file and the job's
  work dir are deleted and the record is marked (``expired_at``; ``GET .../result`` answers 410
  ``result_expired``);
* deletes prepared avatars (``avatars/<key>/``) and registered templates not used for
  ``avatar_ttl_s`` (their modification time: a job that uses an avatar touches it);
* deletes temp folders and files that killed processes left behind, older than ``stale_temp_s``:
  ``jobs/<id>/`` of jobs that are terminal or unknown, half-built avatars (``avatars/.tmp*``),
  unfinished uploads (``registered/**/.upload-*``), partial results, old warm-up dirs.

The disk watermark (507 at submission) is in ``serve_app/api/admission.py``.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from serve_app.config import RetentionSettings
from serve_app.jobs.records import ACTIVE
from serve_app.jobs.storage import Storage

log = logging.getLogger("lipserve.retention")


@dataclass
class SweepReport:
    expired_jobs: list[str] = field(default_factory=list)
    removed_paths: list[str] = field(default_factory=list)


def _age(path: Path, now: float) -> float:
    try:
        return now - path.stat().st_mtime
    except OSError:
        return 0.0


def _remove(path: Path, report: SweepReport) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
    report.removed_paths.append(str(path))


class Sweeper:
    def __init__(self, store, storage: Storage, settings: RetentionSettings, batch: int = 200):
        self.store = store  # a blocking JobStore
        self.storage = storage
        self.settings = settings
        self.batch = batch

    def sweep(self, now: float | None = None) -> SweepReport:
        now = time.time() if now is None else now
        report = SweepReport()
        self._expire_results(now, report)
        self._expire_avatars(now, report)
        self._remove_stale_temp(now, report)
        if report.expired_jobs or report.removed_paths:
            log.info("retention: %d results expired, %d paths removed", len(report.expired_jobs),
                     len(report.removed_paths))
        return report

    def _expire_results(self, now: float, report: SweepReport) -> None:
        while True:
            ids = self.store.expirable(now - self.settings.result_ttl_s, limit=self.batch)
            if not ids:
                return
            for job_id in ids:
                rec = self.store.get(job_id)
                if rec is None:
                    continue
                if rec.result_path:
                    Path(rec.result_path).unlink(missing_ok=True)
                self.storage.result_path(job_id).unlink(missing_ok=True)
                self.storage.remove_job_work(job_id)
                self.store.expire(job_id, now=now)
                report.expired_jobs.append(job_id)
            if len(ids) < self.batch:
                return

    def _expire_avatars(self, now: float, report: SweepReport) -> None:
        ttl = self.settings.avatar_ttl_s
        for entry in self.storage.avatar_cache_dir.iterdir():
            if not entry.name.startswith(".") and _age(entry, now) > ttl:
                _remove(entry, report)
        for tenant_dir in self.storage.registered_dir().iterdir():
            if tenant_dir.is_dir() and not tenant_dir.name.startswith("."):
                for entry in tenant_dir.iterdir():
                    if not entry.name.startswith(".") and _age(entry, now) > ttl:
                        _remove(entry, report)

    def _remove_stale_temp(self, now: float, report: SweepReport) -> None:
        grace = self.settings.stale_temp_s
        for job_dir in (self.storage.root / "jobs").iterdir():
            if _age(job_dir, now) <= grace:
                continue
            rec = self.store.get(job_dir.name)
            if rec is None or rec.status not in ACTIVE:
                _remove(job_dir, report)
        candidates = [*self.storage.avatar_cache_dir.glob(".*"), *self.storage.registered_dir().glob("**/.upload-*"),
                      *(self.storage.root / "results").glob("*partial*"), *self.storage.root.glob("warmup*/*")]
        for path in candidates:
            if _age(path, now) > grace:
                _remove(path, report)


def touch(path: str | os.PathLike) -> None:
    """Mark an avatar as used (its age is what retention reads)."""
    try:
        os.utime(path)
    except OSError:
        pass
