"""Joining: encoded segments -> the final MP4, without re-encoding, with AAC from the original audio.

:func:`join_segments` demuxes the segments' H.264 packets and copies them into the final MP4 (stream
created with ``add_stream_from_template`` from the first segment); packet ``k`` of a segment preceded by
``F`` frames gets ``pts = dts = F + k`` in ``1/fps``. The audio is encoded to AAC from the original audio
input (native rate when AAC supports it, mono or stereo), neither trimmed nor padded. Video and audio
packets are interleaved by time, and the file gets ``movflags=+faststart`` (``moov`` before ``mdat``).
Written atomically. Segments encoded with identical settings share identical SPS/PPS; should a segment's
decoder configuration differ from the first one's (e.g. a retry ran on a worker with another encoder),
its parameter sets are inserted in-band before its first frame so the joined stream still decodes.
"""

from __future__ import annotations

import heapq
import os
from fractions import Fraction
from pathlib import Path
from typing import Iterator

import av

from actors.errors import EmptyAudioError, InternalError, InvalidParameterError, LipserveError, NoAudioStreamError, UnreadableFileError
from actors.media.atomic import atomic_output
from actors.media.encode import check_fps
from actors.media.open import open_media

_AAC_RATES = (96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000, 7350)
_STAGE = "writer"


def _avcc_parameter_sets(extradata: bytes | None) -> tuple[int, bytes] | None:
    """(NAL length size, length-prefixed SPS+PPS NAL units) from an avcC record, else None."""
    if not extradata or len(extradata) < 7 or extradata[0] != 1:
        return None
    length_size = (extradata[4] & 3) + 1
    nals: list[bytes] = []
    pos = 5
    try:
        for count_mask in (0x1F, 0xFF):  # SPS count (5 bits), then PPS count (8 bits)
            count = extradata[pos] & count_mask
            pos += 1
            for _ in range(count):
                size = int.from_bytes(extradata[pos:pos + 2], "big")
                pos += 2
                nal = extradata[pos:pos + size]
                if len(nal) != size:
                    return None
                pos += size
                nals.append(nal)
    except IndexError:
        return None
    return length_size, b"".join(len(nal).to_bytes(length_size, "big") + nal for nal in nals)


def _open_segment(path: str):
    if not os.path.isfile(path):
        raise InternalError(f"segment file is missing: {path}", path=path, stage=_STAGE)
    try:
        container = open_media(path)
    except LipserveError as exc:
        raise InternalError(f"cannot open segment: {exc.message}", path=path, stage=_STAGE) from exc
    if not container.streams.video:
        container.close()
        raise InternalError(f"segment {path} has no video stream", path=path, stage=_STAGE)
    return container


def _segment_extradata(path: str) -> bytes | None:
    container = _open_segment(path)
    try:
        return container.streams.video[0].codec_context.extradata
    finally:
        container.close()


def _video_packets(segment_paths: list[str], fps: Fraction, first_stream, counter: list[int]):
    """Yield ``(time_s, order, packet)`` for every segment packet, rebased onto one timeline."""
    tb = Fraction(1) / fps
    # If the segments' decoder configurations (SPS/PPS) are not all identical, every segment carries
    # its own parameter sets in-band before its first frame (they share ids, so a segment relying on
    # the stream-level configuration after one that replaced it would decode with the wrong ones).
    extradatas = [_segment_extradata(p) for p in segment_paths]
    mixed = any(x != extradatas[0] for x in extradatas[1:])
    ref_size = (first_stream.codec_context.width, first_stream.codec_context.height)
    ref_codec = first_stream.codec_context.name
    frames_before = 0
    for path in segment_paths:
        container = _open_segment(path)
        try:
            stream = container.streams.video[0]
            cc = stream.codec_context
            if (cc.width, cc.height) != ref_size or cc.name != ref_codec:
                raise InvalidParameterError(
                    f"segment {path} is {cc.name} {cc.width}x{cc.height}, but the first segment is "
                    f"{ref_codec} {ref_size[0]}x{ref_size[1]}: segments must share codec and size",
                    path=path, stage=_STAGE)
            inband = _avcc_parameter_sets(cc.extradata) if mixed else None
            last_pts = None
            k = 0
            for packet in container.demux(stream):
                if packet.size == 0:  # the demuxer's end-of-stream flush packet
                    continue
                if packet.pts is not None:
                    if last_pts is not None and packet.pts <= last_pts:
                        raise InvalidParameterError(
                            f"segment {path} has reordered frames (B-frames?): its packets must be in "
                            f"presentation order", path=path, stage=_STAGE)
                    last_pts = packet.pts
                if k == 0 and inband is not None:
                    # Different decoder configuration: carry this segment's SPS/PPS in-band.
                    packet = av.Packet(inband[1] + bytes(packet))
                    packet.is_keyframe = True
                index = frames_before + k
                packet.time_base = tb
                packet.pts = index
                packet.dts = index
                packet.duration = 1
                yield (float(index * tb), 0, packet)
                k += 1
                counter[0] += 1
            frames_before += k
        except (av.FFmpegError, OSError) as exc:
            raise InternalError(f"cannot read segment {path}: {exc}", path=path, stage=_STAGE) from exc
        finally:
            container.close()


def _audio_layout_and_rate(stream) -> tuple[str, int]:
    cc = stream.codec_context
    channels = int(getattr(cc, "channels", 0) or (cc.layout.nb_channels if cc.layout else 0) or 1)
    layout = "mono" if channels == 1 else "stereo"
    rate = int(stream.rate or cc.sample_rate or 0) or 48000
    if rate not in _AAC_RATES:  # AAC has a fixed set of rates: take the nearest one above, else the top
        higher = [r for r in _AAC_RATES if r >= rate]
        rate = min(higher) if higher else max(_AAC_RATES)
    return layout, rate


def _audio_packets(container, in_stream, out_stream, rate: int, layout: str, path: str,
                   counter: list[int]) -> Iterator[tuple[float, int, av.Packet]]:
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
    counter[0] = n
    if n == 0:
        raise EmptyAudioError(f"{path}: the audio track holds no samples", path=path, stage=_STAGE)
    for packet in out_stream.encode(None):
        yield (float(packet.pts * packet.time_base), 1, packet)


def join_segments(segment_paths, audio_path, out_path, fps: Fraction, audio_bitrate: int = 128000) -> None:
    """Join encoded segments (stream copy) with AAC audio from ``audio_path`` into ``out_path``.

    The result is a faststart MP4 whose frame count is the sum of the segments' and whose video
    lasts ``n_frames / fps``; the audio keeps every input sample (not trimmed to the video).
    """
    out_path = Path(out_path)
    audio_path = str(audio_path)
    fps = check_fps(fps)
    segment_paths = [str(p) for p in segment_paths]
    if not segment_paths:
        raise InvalidParameterError(f"{out_path}: no segments to join", path=str(out_path), stage=_STAGE)
    audio_in = open_media(audio_path)
    try:
        with atomic_output(out_path, "joining the segments") as tmp:
            if not audio_in.streams.audio:
                raise NoAudioStreamError(f"{audio_path} has no audio stream", path=audio_path, stage=_STAGE)
            a_in = audio_in.streams.audio[0]
            layout, rate = _audio_layout_and_rate(a_in)
            first = _open_segment(segment_paths[0])
            try:
                with av.open(str(tmp), "w", format="mp4", container_options={"movflags": "+faststart"}) as out:
                    v_out = out.add_stream_from_template(first.streams.video[0])
                    v_out.time_base = Fraction(1) / fps
                    a_out = out.add_stream("aac", rate=rate, layout=layout)
                    a_out.bit_rate = int(audio_bitrate)
                    n_video, n_audio = [0], [0]
                    packets = heapq.merge(
                        _video_packets(segment_paths, fps, first.streams.video[0], n_video),
                        _audio_packets(audio_in, a_in, a_out, rate, layout, audio_path, n_audio),
                        key=lambda item: (item[0], item[1]),
                    )
                    for _, order, packet in packets:
                        packet.stream = v_out if order == 0 else a_out
                        out.mux(packet)
            finally:
                first.close()
            if n_video[0] == 0:
                raise InternalError(f"{out_path}: the segments hold no video frames", path=str(out_path),
                                    stage=_STAGE)
    finally:
        audio_in.close()

