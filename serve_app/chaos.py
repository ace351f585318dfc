"""Fault injection for the chaos tests, disabled (``chaos_dir: null``) in every shipped config."""

from __future__ import annotations

import os
import time
from pathlib import Path


class ChaosHooks:
    """Fault injection for the chaos tests: a marker file in ``chaos_dir`` triggers one fault.

    A marker is consumed atomically (rename), so exactly one call sees it even across restarts.
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
        taken.unlink(missing_ok=True)
        return payload or "1"

    def present(self, name: str) -> bool:
        return self.dir is not None and (self.dir / name).exists()
