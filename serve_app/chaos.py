"""Fault injection for the chaos tests, disabled (``chaos_dir: null``) in every shipped config."""

from __future__ import annotations

import os
import time
from pathlib import Path


class ChaosHooks:
    """Fault injection for the chaos tests: a marker file in ``chaos_dir`` triggers one fault.

    A marker is consumed atomically (rename), so exactly one call sees it even across restarts.
    A payload ending in ``after N`` lets N calls pass first (each puts the marker back with N-1),
    so a test can place a mid-job fault before the job starts instead of racing its progress.
    A standing marker (``generator_slow``) is read by :meth:`seconds` on every call, never consumed.
    Disabled (``chaos_dir=None``) in every shipped config.
    """

    def __init__(self, chaos_dir: str | None):
        self.dir = Path(chaos_dir) if chaos_dir else None

    def take(self, name: str) -> str | None:
        if self.dir is None:
            return None
        marker = self.dir / name
        taken = self.dir / f"{name}.taken.{os.getpid()}.{time.monotonic_ns()}"
        try:
            os.rename(marker, taken)
        except FileNotFoundError:
            return None
        payload = taken.read_text().strip()
        value, sep, count = payload.rpartition(" after ")
        if sep and count.isdigit():
            if int(count) > 0:
                # The taken file is this call's alone; renamed back whole, no call reads it half written.
                taken.write_text(f"{value} after {int(count) - 1}")
                os.replace(taken, marker)
                return None
            payload = value
        taken.unlink(missing_ok=True)
        return payload or "1"

    def present(self, name: str) -> bool:
        return self.dir is not None and (self.dir / name).exists()

    def seconds(self, name: str) -> float:
        """A standing (not consumed) marker's payload in seconds; 0 when absent or unreadable."""
        if self.dir is None:
            return 0.0
        try:
            return float((self.dir / name).read_text().strip() or 0)
        except (FileNotFoundError, ValueError):
            return 0.0


class SlowFrames:
    """The ``writer_slow`` fault: wraps a writer call's stop token (checked once per frame) so each
    frame takes ``seconds`` longer, and logs every check to ``chaos_dir/writer_frames.log`` as
    ``<token name> <pid> <unix s> <stopped 0/1>``: the chaos test reads how long a stopped
    attempt's writer went on."""

    def __init__(self, stop, seconds: float, log_path: Path):
        self.stop, self.seconds, self.log_path = stop, seconds, log_path

    def check(self, stage: str) -> None:
        stopped = self.stop is not None and self.stop.is_set()
        with open(self.log_path, "a") as f:
            f.write(f"{os.path.basename(getattr(self.stop, 'path', '-'))} {os.getpid()} {time.time():.3f} {int(stopped)}\n")
        if self.stop is not None:
            self.stop.check(stage)
        time.sleep(self.seconds)  # a slow frame (the fault), after the check as a real frame's work


def writer_stop(hooks: ChaosHooks, stop):
    """The stop object a writer call checks: ``stop`` itself, or wrapped by a ``writer_slow`` fault
    (marker payload: seconds per frame). Every writer call after the fault logs its checks too."""
    if hooks.dir is None:
        return stop
    slow = hooks.take("writer_slow")
    if slow is None and not hooks.present("writer_log"):
        return stop
    return SlowFrames(stop, float(slow) if slow and slow != "1" else 0.0, hooks.dir / "writer_frames.log")
