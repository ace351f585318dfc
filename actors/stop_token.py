"""A per-attempt stop flag that every worker process of the attempt can see: a marker file.

When an attempt ends early (a stage timed out, the job was cancelled or taken over), the driver
sets its token before it lets in-flight calls settle. Writer calls check the token between frames
(``SegmentWriter``) and at their start (``prepare_avatar``, ``finalize``), and raise
``CancelledError`` once it is set, so no writer keeps decoding and encoding for a dead attempt —
including a call that Ray re-sends to a restarted actor after ``restart_stuck`` killed it.

Why a file and not ``ray.cancel``: cancelling an actor call that is queued leaves a gap in the
actor's per-caller ordering that stalls every later call to it (health checks too) for Ray's
reorder wait (~30 s), and an actor call that is running cannot be interrupted at a frame boundary
at all. Why not a small actor or flag in the object store: a check per frame must cost a stat, not
an RPC. The marker lives under the job's work dir (on ``storage_dir``, which every worker already
reads and writes), is named by a per-attempt id so a later attempt of the same job is unaffected,
and is removed with the work dir. Its absence means "go on": a slow file system view can only make
a worker stop a little later, never stop a live attempt.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

from actors.errors import CancelledError

STOP_DIR = ".stop"  # under the job's work dir


class StopToken:
    """Picklable (just a path): travels with each actor call of the attempt."""

    __slots__ = ("path", "_seen")

    def __init__(self, path: str):
        self.path = path
        self._seen = False  # once seen set, no more stats

    @classmethod
    def for_attempt(cls, work_dir: str | os.PathLike) -> "StopToken":
        return cls(os.path.join(os.fspath(work_dir), STOP_DIR, uuid.uuid4().hex))

    def set(self) -> None:
        """Idempotent; a work dir already removed means nothing is left to stop."""
        try:
            Path(self.path).parent.mkdir(exist_ok=True)  # never re-creates a removed work dir
            Path(self.path).touch()
        except FileNotFoundError:
            pass
        self._seen = True

    def is_set(self) -> bool:
        if not self._seen:
            self._seen = os.path.exists(self.path)
        return self._seen

    def check(self, stage: str) -> None:
        """Raise ``CancelledError`` if the attempt was stopped (call between units of work)."""
        if self.is_set():
            raise CancelledError(f"attempt stopped during {stage}", stage=stage)

    def __getstate__(self):
        return self.path

    def __setstate__(self, path):
        self.path, self._seen = path, False

    def __repr__(self) -> str:
        return f"StopToken({os.path.basename(self.path)})"
