"""The one place that opens media files for reading.

Every input (the client's audio and template, our own segments) is opened here, so this is the
single place that decides which containers and protocols may be read. A crafted file is the main
way a client can turn FFmpeg against the server: an HLS playlist or a concat list makes FFmpeg open
further files or URLs named inside it. So only the demuxers the service needs are allowed, chosen by
content (the client's file extension decides nothing), and only the ``file`` protocol, for the file
itself: a demuxer that would open anything else is refused before it reads a byte of it.
"""

from __future__ import annotations

import os

import av

from actors.errors import UnreadableFileError, decode_failure

# FFmpeg demuxer names (as ``container.format.name`` reports them). mp4/mov, matroska/webm, wav,
# mp3, ogg, flac, raw AAC (ADTS), AVI, MPEG-TS. Playlists (hls), concat, image2 sequences, tee, etc. are out.
ALLOWED_DEMUXERS = ("mov,mp4,m4a,3gp,3g2,mj2", "matroska,webm", "wav", "mp3", "ogg", "flac", "aac", "avi", "mpegts")
_FORMAT_WHITELIST = ",".join(ALLOWED_DEMUXERS)
ACCEPTED = "mp4/mov, mkv/webm, wav, mp3, ogg, flac, aac, avi, ts"
_OPTIONS = {"protocol_whitelist": "file", "format_whitelist": _FORMAT_WHITELIST}


def reason(exc: BaseException) -> str:
    """An exception as a short reason for a message; never empty."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def open_media(path: str | os.PathLike):
    """Open ``path`` for demuxing, or raise ``UnreadableFileError`` saying why (missing, a directory,
    not media, or a container the service does not read). The caller closes the container."""
    p = os.fspath(path)
    if not os.path.exists(p):
        raise UnreadableFileError(f"{p}: file does not exist", path=p)
    if os.path.isdir(p):
        raise UnreadableFileError(f"{p}: is a directory, not a media file", path=p)
    try:
        container = av.open(p, mode="r", options=dict(_OPTIONS))
    except (av.error.PermissionError, av.error.ArgumentError) as exc:
        # What the whitelists answer for a demuxer or protocol they refuse (EPERM / EINVAL).
        raise UnreadableFileError(f"{p}: not an audio or video file of an accepted kind ({ACCEPTED}; playlists and "
                                  "lists of other files are refused)", path=p) from exc
    except av.error.FFmpegError as exc:
        raise decode_failure(exc, f"{p}: not a readable media file ({reason(exc)})", p) from exc
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise decode_failure(exc, f"{p}: cannot open ({reason(exc)})", p) from exc
    if container.format.name not in ALLOWED_DEMUXERS:  # belt and braces: whitelist semantics vary
        container.close()
        raise UnreadableFileError(f"{p}: {container.format.name} files are not accepted", path=p)
    return container


def declared_duration_s(container, stream) -> float | None:
    """The duration the file claims, in seconds (stream first, then container), or None if unknown."""
    try:
        if stream.duration is not None and stream.time_base is not None and stream.duration > 0:
            return float(stream.duration * stream.time_base)
    except Exception:  # pragma: no cover - defensive: odd streams without a time base
        pass
    if container.duration is not None and container.duration > 0:
        return container.duration / av.time_base
    return None
