"""The job's AAC track: encoded once, while the video renders, then only copied.

The final MP4 (``join.py``) and the live HLS stream (``hls.py``) carry the same AAC packets: the
original audio decoded, resampled to planar float at its own rate (the nearest AAC rate above it if
AAC has no such rate), mono or stereo, encoded with FFmpeg's AAC encoder, neither trimmed nor
padded, timestamps re-made from the sample count (gapless). :func:`write_audio_track` writes them
into an MP4 of their own in the job's work dir; the segment driver starts it beside the first
segments, so the final join is a stream copy of both tracks. Encoding AAC is linear in the audio's
length (about 9 ms per second of speech on one core), and at the end of a job nothing else would
overlap with it: the final join of a 60 s job went from 0.60 s to 0.12 s (``bench_pipeline.py``).

The MP4 keeps the encoder's priming packet (pts -1024, hidden by an edit list), and a packet copy
keeps it too: the joined file decodes to the same samples as one whose AAC was encoded in place.
"""

from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path
from typing import Iterator

import av

from actors.errors import EmptyAudioError, InternalError, NoAudioStreamError, UnreadableFileError
from actors.media.atomic import atomic_output
from actors.media.open import open_media

AUDIO_TRACK_NAME = "audio.m4a"  # in the job's work dir, beside the segment files
AAC_BITRATE = 128000
_AAC_RATES = (96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000, 7350)
_STAGE = "writer"

Timed = tuple[float, int, av.Packet]  # (presentation time in s, 1 = audio, packet), for heapq.merge


def aac_layout_and_rate(stream) -> tuple[str, int]:
    """The AAC track's layout (mono/stereo) and rate for an input audio stream."""
    cc = stream.codec_context
    channels = int(getattr(cc, "channels", 0) or (cc.layout.nb_channels if cc.layout else 0) or 1)
    layout = "mono" if channels == 1 else "stereo"
    rate = int(stream.rate or cc.sample_rate or 0) or 48000
    if rate not in _AAC_RATES:  # AAC has a fixed set of rates: take the nearest one above, else the top
        higher = [r for r in _AAC_RATES if r >= rate]
        rate = min(higher) if higher else max(_AAC_RATES)
    return layout, rate


def aac_packets(container, in_stream, out_stream, rate: int, layout: str, path: str) -> Iterator[Timed]:
    """Decode the original audio, resample to fltp (same rate/channels), encode AAC, yield packets."""
    resampler = av.AudioResampler(format="fltp", layout=layout, rate=rate, frame_size=1024)
    tb = Fraction(1, rate)
    n = 0

    def encode(frames):
        nonlocal n
        for f in frames:
            f.pts = n
            f.time_base = tb
            n += f.samples
            for packet in out_stream.encode(f):
                yield packet

    try:
        for frame in container.decode(in_stream):
            frame.pts = None  # timestamps are re-made from the sample count (gapless)
            for packet in encode(resampler.resample(frame)):
                yield (float(packet.pts * packet.time_base), 1, packet)
        for packet in encode(resampler.resample(None)):
            yield (float(packet.pts * packet.time_base), 1, packet)
    except (av.FFmpegError, OSError) as exc:
        raise UnreadableFileError(f"cannot decode audio of {path}: {exc}", path=path, stage=_STAGE) from exc
    if n == 0:
        raise EmptyAudioError(f"{path}: the audio track holds no samples", path=path, stage=_STAGE)
    for packet in out_stream.encode(None):
        yield (float(packet.pts * packet.time_base), 1, packet)


def audio_stream(container, path: str):
    if not container.streams.audio:
        raise NoAudioStreamError(f"{path} has no audio stream", path=path, stage=_STAGE)
    return container.streams.audio[0]


def write_audio_track(audio_path: str, out_path: str | os.PathLike, audio_bitrate: int = AAC_BITRATE) -> str:
    """The job's whole track as AAC in an MP4 at ``out_path`` (written atomically). Kept if it exists
    already: an earlier attempt of the job wrote it from the same input, so it holds the same bytes."""
    out_path = Path(out_path)
    if out_path.exists():
        return str(out_path)
    audio_in = open_media(audio_path)
    try:
        a_in = audio_stream(audio_in, audio_path)
        layout, rate = aac_layout_and_rate(a_in)
        with atomic_output(out_path, "encoding the audio track") as tmp:
            with av.open(str(tmp), "w", format="mp4") as out:
                a_out = out.add_stream("aac", rate=rate, layout=layout)
                a_out.bit_rate = int(audio_bitrate)
                for _, _, packet in aac_packets(audio_in, a_in, a_out, rate, layout, audio_path):
                    packet.stream = a_out
                    out.mux(packet)
    finally:
        audio_in.close()
    return str(out_path)


def track_packets(container, stream, path: str) -> Iterator[Timed]:
    """The packets of a track written by :func:`write_audio_track`, as they are (a stream copy)."""
    try:
        for packet in container.demux(stream):
            if packet.size == 0 or packet.pts is None:  # the demuxer's end-of-stream flush packet
                continue
            yield (float(packet.pts * stream.time_base), 1, packet)
    except (av.FFmpegError, OSError) as exc:  # our own file, not the client's: an internal fault
        raise InternalError(f"cannot read the job's AAC track ({os.path.basename(path)}): {type(exc).__name__}",
                            stage=_STAGE) from exc
