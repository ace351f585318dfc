"""Live HLS of a running job: the encoded segments re-cut as fMP4 (RFC 8216 media playlist, EXT-X-MAP).

Nothing is re-encoded for the live stream. Each HLS segment is one of the job's closed-GOP H.264
segment files (``encode.py``), its packets copied with their final timestamps (frame ``F + k`` of the
joined video), plus the AAC packets of the same stretch of time, taken from the job's AAC track
(``audio_track.py``, in the job's work dir), which the final join copies too: the live stream carries
the same video packets and the same audio packets as the final MP4, cut at the same frame boundaries.

    hls/<job>/init.mp4         ftyp + moov (no samples): the EXT-X-MAP of every segment
    hls/<job>/seg_00000.m4s    styp + moof + mdat, one fragment per segment (video + audio)
    hls/<job>/index.m3u8       EVENT playlist: grows as segments finish, EXT-X-ENDLIST at the end

The fragments come from FFmpeg's mov muxer (``empty_moov``, one fragment per file, ``frag_discont``
without edit lists so ``tfdt`` holds the real decode time). Audio timing: the MP4 hides the AAC
encoder's priming (1024 samples) with an edit list; fMP4 players mostly ignore edit lists, so here
the priming packet starts at 0 and the video starts ``priming`` later (``tfdt`` of the first video
fragment = 1024 / rate s): sound and picture line up exactly as in the MP4, and the stream's first
frame is at that small offset (players start at the first buffered frame).
Every file is written atomically, so a player never reads half a segment or half a playlist.
"""

from __future__ import annotations

import heapq
import io
import math
import os
import struct
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av

from actors.errors import InternalError
from actors.media.atomic import atomic_write
from actors.media.encode import check_fps
from actors.media.open import open_media

INIT = "init.mp4"
PLAYLIST = "index.m3u8"
MIME_PLAYLIST = "application/vnd.apple.mpegurl"
_STAGE = "hls"
_STYP = struct.pack(">I4s4sI4s4s", 24, b"styp", b"msdh", 0, b"msdh", b"msix")
# One fragment per file: never cut on keyframes (frag_duration ~35 min, far above any segment), tfdt = dts.
_FRAGMENT_OPTIONS = {"movflags": "empty_moov+default_base_moof+frag_discont", "frag_duration": str(2**31 - 1),
                     "use_editlist": "0", "avoid_negative_ts": "disabled"}


def segment_name(index: int) -> str:
    return f"seg_{index:05d}.m4s"


def is_media_name(name: str) -> bool:
    """The names a job's HLS directory serves (the route refuses anything else)."""
    if name == INIT:
        return True
    return len(name) == 13 and name.startswith("seg_") and name.endswith(".m4s") and name[4:9].isdigit()


# --------------------------------------------------------------------------------------------- audio

def _audio_slice(container, start_s: Fraction, stop_s: Fraction | None):
    """(stream, priming in seconds, packets): the AAC packets whose presentation time in the MP4
    (priming packet at ``-priming``) lies in ``[start_s - priming, stop_s - priming)``, i.e. whose
    samples play with the frames ``[start_s, stop_s)``; re-timed so the priming packet is at 0.
    ``stop_s`` None = to the end."""
    stream = container.streams.audio[0]
    tb = stream.time_base
    first = None
    picked = []
    for packet in container.demux(stream):
        if packet.size == 0 or packet.pts is None:
            continue
        if first is None:
            first = packet.pts
        t = (packet.pts - first) * tb  # 0 = the priming packet = the MP4's -priming
        if t < start_s:
            continue
        if stop_s is not None and t >= stop_s:
            break
        packet.pts = packet.dts = packet.pts - first
        picked.append(packet)
    priming = Fraction(-min(0, first or 0)) * tb
    return stream, priming, picked


def _common_time_base(a: Fraction, b: Fraction) -> Fraction:
    """The largest time unit both durations are whole multiples of (gcd of two fractions)."""
    if b == 0:
        return a
    return Fraction(math.gcd(a.numerator, b.numerator), math.lcm(a.denominator, b.denominator))


# ------------------------------------------------------------------------------------------ segments

def _top_boxes(data: bytes) -> list[tuple[bytes, bytes]]:
    boxes, pos = [], 0
    while pos + 8 <= len(data):
        size, kind = struct.unpack(">I4s", data[pos:pos + 8])
        if size == 1:
            size = struct.unpack(">Q", data[pos + 8:pos + 16])[0]
        if size < 8 or pos + size > len(data):
            raise InternalError(f"the fMP4 muxer wrote a malformed {kind!r} box", stage=_STAGE)
        boxes.append((kind, data[pos:pos + size]))
        pos += size
    return boxes


def _fragment(segment_path: str, audio_track: str, index: int, start_frame: int, n_frames: int,
              fps: Fraction, last: bool) -> tuple[bytes, bytes, int]:
    """(init bytes, media bytes, video frames) of one HLS segment."""
    tb = Fraction(1) / fps
    video_in = open_media(segment_path)
    audio_in = open_media(audio_track)
    try:
        v_in = video_in.streams.video[0]
        start_s, stop_s = Fraction(start_frame) * tb, (None if last else Fraction(start_frame + n_frames) * tb)
        a_in, priming, audio = _audio_slice(audio_in, start_s, stop_s)
        vtb = _common_time_base(tb, priming)  # frame k at priming + k / fps, in whole ticks
        per_frame, shift = int(tb / vtb), int(priming / vtb)
        buf = io.BytesIO()
        with av.open(buf, "w", format="mp4", options={**_FRAGMENT_OPTIONS, "fragment_index": str(index + 1)}) as out:
            v_out = out.add_stream_from_template(v_in)
            v_out.time_base = vtb
            a_out = out.add_stream_from_template(a_in)
            a_out.time_base = a_in.time_base
            video = []
            for k, packet in enumerate(p for p in video_in.demux(v_in) if p.size):
                pts = shift + (start_frame + k) * per_frame
                packet.time_base, packet.pts, packet.dts, packet.duration = vtb, pts, pts, per_frame
                video.append(packet)
            if not video:
                raise InternalError(f"segment {segment_path} holds no video packets", path=segment_path,
                                    stage=_STAGE)
            timed = heapq.merge(((p.pts * vtb, 0, i, p) for i, p in enumerate(video)),
                                ((p.pts * a_in.time_base, 1, i, p) for i, p in enumerate(audio)))
            for _, kind, _, packet in timed:
                packet.stream = v_out if kind == 0 else a_out
                out.mux(packet)
    except av.FFmpegError as exc:
        raise InternalError(f"cannot cut the live segment {index}: {exc}", path=segment_path, stage=_STAGE) from exc
    finally:
        video_in.close()
        audio_in.close()
    boxes = _top_boxes(buf.getvalue())
    init = b"".join(b for kind, b in boxes if kind in (b"ftyp", b"moov"))
    media = b"".join(b for kind, b in boxes if kind in (b"moof", b"mdat"))
    if not init or not media:
        raise InternalError(f"the fMP4 muxer wrote no fragment for live segment {index}", stage=_STAGE)
    return init, _STYP + media, len(video)


def publish_segment(segment_path: str, hls_dir: str | os.PathLike, index: int, start_frame: int,
                    n_frames: int, fps, last: bool, audio_track: str) -> int:
    """Write ``seg_<index>.m4s`` (and ``init.mp4`` if it is missing) from one encoded segment and the
    job's AAC track (``audio_track.write_audio_track``). Returns the segment's frame count."""
    hls_dir = Path(hls_dir)
    fps = check_fps(fps)
    init, media, frames = _fragment(segment_path, str(audio_track), index, start_frame, n_frames, fps, last)
    if not (hls_dir / INIT).exists():
        atomic_write(hls_dir / INIT, lambda tmp: tmp.write_bytes(init))
    atomic_write(hls_dir / segment_name(index), lambda tmp: tmp.write_bytes(media))
    return frames


# ------------------------------------------------------------------------------------------ playlist

@dataclass(frozen=True)
class PlaylistEntry:
    index: int
    seconds: float


def playlist_text(entries: list[PlaylistEntry], target_s: float, ended: bool) -> str:
    """An EVENT media playlist of fMP4 segments (version 7: EXT-X-MAP in a media playlist)."""
    lines = ["#EXTM3U", "#EXT-X-VERSION:7", f"#EXT-X-TARGETDURATION:{max(1, math.ceil(target_s))}",
             "#EXT-X-MEDIA-SEQUENCE:0", "#EXT-X-PLAYLIST-TYPE:EVENT", "#EXT-X-INDEPENDENT-SEGMENTS",
             f'#EXT-X-MAP:URI="{INIT}"']
    for e in entries:
        lines += [f"#EXTINF:{e.seconds:.6f},", segment_name(e.index)]
    if ended:
        lines.append("#EXT-X-ENDLIST")
    return "\n".join(lines) + "\n"


def listed_segments(hls_dir: str | os.PathLike) -> int:
    """How many segments the playlist in ``hls_dir`` lists (0 without one)."""
    try:
        text = (Path(hls_dir) / PLAYLIST).read_text(encoding="utf-8")
    except OSError:
        return 0
    return sum(1 for line in text.splitlines() if line and not line.startswith("#"))


def write_playlist(hls_dir: str | os.PathLike, entries: list[PlaylistEntry], target_s: float, ended: bool) -> Path:
    text = playlist_text(entries, target_s, ended)
    return atomic_write(Path(hls_dir) / PLAYLIST, lambda tmp: tmp.write_text(text, encoding="utf-8"))
