"""Content hashes of media files: what caches and registered avatars are keyed by."""

from __future__ import annotations

import hashlib
import os


def file_digest(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """sha256 of a file's content, streamed."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
