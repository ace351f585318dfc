"""Joining: encoded segments -> the final MP4, without re-encoding, with the job's AAC track.

:func:`join_segments` demuxes the segments' H.264 packets and copies them into the final MP4 (stream
created with ``add_stream_from_template`` from the first segment); packet ``k`` of a segment preceded by
``F`` frames gets ``pts = dts = F + k`` in ``1/fps``. The audio is the job's AAC track
(``audio_track.py``), copied as it is, or, without one, encoded here with the same settings. Video and audio
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

import av

from actors.errors import InternalError, InvalidParameterError, LipserveError
from actors.media.atomic import atomic_output
from actors.media.audio_track import AAC_BITRATE, aac_layout_and_rate, aac_packets, audio_stream, track_packets
from actors.media.encode import check_fps
from actors.media.open import open_media

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


def join_segments(segment_paths, audio_path, out_path, fps: Fraction, audio_bitrate: int = AAC_BITRATE,
                  copy_audio: bool = False) -> None:
    """Join encoded segments (stream copy) with AAC audio into ``out_path``.

    ``copy_audio``: ``audio_path`` is the job's AAC track (``audio_track.write_audio_track``), copied
    as it is; else the AAC is encoded here from ``audio_path``, with the same settings.
    The result is a faststart MP4 whose frame count is the sum of the segments' and whose video
    lasts ``n_frames / fps``; the audio keeps every input sample (not trimmed to the video).
    """
    out_path = Path(out_path)
    audio_path = str(audio_path)
    fps = check_fps(fps)
    segment_paths = [str(p) for p in segment_paths]
    if not segment_paths:
        raise InvalidParameterError(f"{out_path}: no segments to join", path=str(out_path), stage=_STAGE)
    try:
        audio_in = open_media(audio_path)
    except LipserveError as exc:
        if copy_audio:  # the service's own file, not the client's: an internal fault, no path shown
            raise InternalError(f"cannot open the job's AAC track ({os.path.basename(audio_path)}): "
                                f"{exc.code.value}", stage=_STAGE) from exc
        raise
    try:
        with atomic_output(out_path, "joining the segments") as tmp:
            a_in = audio_stream(audio_in, audio_path)
            first = _open_segment(segment_paths[0])
            try:
                with av.open(str(tmp), "w", format="mp4", container_options={"movflags": "+faststart"}) as out:
                    v_out = out.add_stream_from_template(first.streams.video[0])
                    v_out.time_base = Fraction(1) / fps
                    if copy_audio:
                        a_out = out.add_stream_from_template(a_in)
                        audio = track_packets(audio_in, a_in, audio_path)
                    else:
                        layout, rate = aac_layout_and_rate(a_in)
                        a_out = out.add_stream("aac", rate=rate, layout=layout)
                        a_out.bit_rate = int(audio_bitrate)
                        audio = aac_packets(audio_in, a_in, a_out, rate, layout, audio_path)
                    n_video = [0]
                    packets = heapq.merge(_video_packets(segment_paths, fps, first.streams.video[0], n_video),
                                          audio, key=lambda item: (item[0], item[1]))
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
