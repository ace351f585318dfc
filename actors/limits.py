"""Configurable limits on input media, checked before any heavy work starts."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MediaLimits:
    max_width: int = 3840
    max_height: int = 3840
    max_pixels: int = 3840 * 2160
    max_duration_s: float = 600.0
    max_fps: float = 60.0
