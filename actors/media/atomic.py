"""Write a file so readers see either the old one or the whole new one, never a partial file."""

from __future__ import annotations

import os
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator


def temp_beside(path: str | os.PathLike) -> Path:
    """A hidden, unique temporary name in ``path``'s directory (same file system: rename is atomic)."""
    p = Path(path)
    return p.with_name(f".{p.name}.{uuid.uuid4().hex[:12]}.tmp")


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path beside ``path``; on success it replaces ``path``, on any failure it is removed."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_beside(out)
    try:
        yield tmp
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write(path: str | os.PathLike, write: Callable[[Path], object]) -> Path:
    """``write(tmp)`` then rename onto ``path``."""
    with atomic_path(path) as tmp:
        write(tmp)
    return Path(path)


def publish_link(src: str | os.PathLike, dest: str | os.PathLike) -> None:
    """Make ``dest`` the same file as ``src``: a hard link (no copy) or a copy across file systems,
    made under a temporary name and renamed into place."""
    import shutil

    def write(tmp: Path) -> None:
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)

    atomic_write(dest, write)


@contextmanager
def atomic_output(path: str | os.PathLike, what: str) -> Iterator[Path]:
    """``atomic_path`` for media outputs: media / OS errors become an ``InternalError`` saying ``what``
    failed (typed errors pass through)."""
    import av

    from actors.errors import InternalError, LipserveError

    try:
        with atomic_path(path) as tmp:
            yield tmp
    except LipserveError:
        raise
    except (av.FFmpegError, OSError, ValueError) as exc:
        raise InternalError(f"{os.fspath(path)}: {what} failed: {exc}", path=os.fspath(path), stage="writer") from exc
