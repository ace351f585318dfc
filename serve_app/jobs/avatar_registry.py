"""Registered avatars: ``registered/<tenant>/<avatar_id>.<ext>`` plus what the client called it.

The template itself is stored under its content hash (``JobIntake.register_avatar``); the original
file name and the probed geometry are kept beside it in ``registered/names/<avatar_id>.json`` (a
separate folder, so ``<avatar_id>.*`` only ever matches the template). Listing reads those small
files only, never the videos.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from actors.media.atomic import atomic_write


def _names_dir(registered: Path) -> Path:
    return registered / "names"


def record(registered: Path, avatar_id: str, name: str, view: dict) -> dict:
    """Keep ``name`` and ``view`` (width, height, fps, frames) of a registered avatar; returns the entry."""
    entry = {"avatar_id": avatar_id, "name": name, **view, "registered_at": time.time()}
    path = _names_dir(registered) / f"{avatar_id}.json"
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(entry), encoding="utf-8"))
    return entry


def list_avatars(registered: Path, limit: int = 1000) -> list[dict]:
    """Registered avatars whose template is still stored, newest first."""
    entries = []
    for path in _names_dir(registered).glob("*.json"):
        try:
            entry = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue  # being replaced, or damaged: not listed, the template stays usable by id
        avatar_id = str(entry.get("avatar_id", ""))
        if avatar_id.isalnum() and any(registered.glob(f"{avatar_id}.*")):
            entries.append(entry)
    entries.sort(key=lambda e: e.get("registered_at", 0), reverse=True)
    return entries[:limit]
