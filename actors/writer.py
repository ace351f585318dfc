"""The segment-based video writer: encode independent H.264 segments, then join them with the audio.

Plain Python over PyAV (no Ray, no ffmpeg CLI).

Design
------
* :func:`encode_segment` writes one **MP4 file per segment**. Every segment gets a fresh encoder,
  so it starts with an IDR frame and is a closed GOP; B-frames are off, so decode order equals
  presentation order and ``dts == pts``. Frame ``k`` of a segment has ``pts = k`` in ``1/fps``.
  The file is written to a hidden temporary name in the same directory and ``os.replace``'d onto
  ``out_path``: re-encoding the same segment (a retry) atomically replaces it.
* :func:`join_segments` demuxes the segments' H.264 packets and copies them, **without re-encoding**,
  into the final MP4 (stream created with ``add_stream_from_template`` from the first segment);
  packet ``k`` of a segment preceded by ``F`` frames gets ``pts = dts = F + k`` in ``1/fps``. The
  audio is encoded to AAC from the original audio input (native rate when AAC supports it, mono or
  stereo), neither trimmed nor padded. Video and audio packets are interleaved by time, and the
  file gets ``movflags=+faststart`` (``moov`` before ``mdat``). Written atomically as well.
* Segments encoded with identical settings share identical SPS/PPS. Should a segment's decoder
  configuration differ from the first one's (e.g. a retry ran on a worker with another encoder),
  its parameter sets are inserted in-band before its first frame so the joined stream still decodes.

Pixels: BGR uint8 frames are converted to yuv420p with the BT.601 matrix (swscale's default) in
limited range, and the stream is tagged accordingly (``colorspace=smpte170m, range=tv``) so players
and decoders agree on the colours. The conversion is done with OpenCV (:func:`bgr_to_i420`), rounded
to nearest: swscale's default bgr24 -> yuv420p path truncates (luma about -0.5, chroma about -1 level
per conversion) and, with its equally biased yuv -> bgr path, made every decode/encode generation
~2 levels darker. Chroma is the 2x2 box average (the same as swscale's).
"""

from __future__ import annotations

import functools
import heapq
import os
import uuid
from contextlib import contextmanager
from fractions import Fraction
from pathlib import Path
from typing import Iterable, Iterator

import av
import cv2
import numpy as np

from actors.errors import (
    EmptyAudioError,
    InternalError,
    InvalidParameterError,
    LipserveError,
    NoAudioStreamError,
    UnreadableFileError,
)

_AAC_RATES = (96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000, 7350)
_AVCOL_SPC_SMPTE170M = 6  # AVColorSpace: BT.601 matrix (what swscale uses by default)
_AVCOL_RANGE_MPEG = 1  # limited ("tv") range
_STAGE = "writer"

# BT.601 (Kr = 0.299, Kb = 0.114), limited range: Cb = 128 + 224/255 * (B - Y) / (2 (1 - Kb)),
# Cr = 128 + 224/255 * (R - Y) / (2 (1 - Kr)), Y = Kr R + Kg G + Kb B, as a matrix on (B, G, R, 1).
# The third row is zero: cv2.transform's 3-in/3-out path is far faster than its 3-in/2-out one.
_KR, _KB = 0.299, 0.114
_KG = 1.0 - _KR - _KB
_BGR_TO_CBCR = np.array([
    [(1.0 - _KB), -_KG, -_KR, 0.0],
    [-_KB, -_KG, (1.0 - _KR), 0.0],
    [0.0, 0.0, 0.0, 0.0],
], np.float64)
_BGR_TO_CBCR[0, :3] *= (224.0 / 255.0) / (2.0 * (1.0 - _KB))
_BGR_TO_CBCR[1, :3] *= (224.0 / 255.0) / (2.0 * (1.0 - _KR))
_BGR_TO_CBCR[:2, 3] = 128.0
# Applied to 4x the 2x2 box average (i.e. the exact 2x2 sum, see bgr_to_i420), hence the 1/4.
_SUM4_TO_CBCR = np.hstack([_BGR_TO_CBCR[:, :3] / 4.0, _BGR_TO_CBCR[:, 3:]]).astype(np.float32)


# --------------------------------------------------------------------------------------------
# helpers


def _tmp_path(out_path: Path) -> Path:
    return out_path.with_name(f".{out_path.name}.{uuid.uuid4().hex[:12]}.tmp")


def _remove_quietly(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    except OSError:  # pragma: no cover
        pass


@contextmanager
def _atomic_output(out_path: Path, what: str):
    """Yield a temp path beside ``out_path``; on success it replaces ``out_path`` atomically, on any
    failure it is removed. Media / OS errors become an ``InternalError`` saying ``what`` failed."""
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_path(out_path)
    try:
        yield tmp
        os.replace(tmp, out_path)
    except LipserveError:
        _remove_quietly(tmp)
        raise
    except (av.FFmpegError, OSError, ValueError) as exc:
        _remove_quietly(tmp)
        raise InternalError(f"{out_path}: {what} failed: {exc}", path=str(out_path), stage=_STAGE) from exc
    except BaseException:
        _remove_quietly(tmp)
        raise


def _check_fps(fps) -> Fraction:
    try:
        fps = Fraction(fps)
    except (TypeError, ValueError) as exc:
        raise InvalidParameterError(f"fps must be a positive number, got {fps!r}", stage=_STAGE) from exc
    if fps <= 0 or fps > 1000:
        raise InvalidParameterError(f"fps must be in (0, 1000], got {fps}", stage=_STAGE)
    return fps


def _encoder_options(codec: str, crf: int, preset: str) -> dict[str, str]:
    if codec == "libx264":
        # open_gop=0 is x264's default; say it anyway: each segment must be a closed GOP.
        return {"crf": str(crf), "preset": str(preset), "bf": "0", "x264-params": "open_gop=0"}
    if codec.endswith("_nvenc"):
        # NVENC has its own preset names (p1..p7); constant-quality VBR is the CRF analogue.
        return {"preset": "p4", "tune": "hq", "rc": "vbr", "cq": str(crf), "b": "0", "bf": "0"}
    return {}


def _open_video_encoder_stream(out, codec: str, fps: Fraction, width: int, height: int,
                               crf: int, preset: str):
    stream = out.add_stream(codec, rate=fps)
    stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
    cc = stream.codec_context
    cc.time_base = Fraction(1) / fps
    cc.max_b_frames = 0
    cc.colorspace = _AVCOL_SPC_SMPTE170M
    cc.color_range = _AVCOL_RANGE_MPEG
    cc.options = _encoder_options(codec, crf, preset)
    return stream


@functools.lru_cache(maxsize=None)
def _encoder_usable(codec: str) -> bool:
    """Whether ``codec`` can really be opened and encode a frame here (driver, GPU, licence)."""
    try:
        ctx = av.CodecContext.create(codec, "w")
        ctx.width, ctx.height, ctx.pix_fmt = 256, 256, "yuv420p"
        ctx.time_base = Fraction(1, 25)
        ctx.framerate = Fraction(25)
        ctx.max_b_frames = 0
        ctx.open()
        frame = av.VideoFrame.from_ndarray(np.zeros((256, 256, 3), np.uint8), format="bgr24")
        frame = frame.reformat(format="yuv420p")
        frame.pts = 0
        packets = list(ctx.encode(frame)) + list(ctx.encode(None))
        return len(packets) > 0
    except Exception:  # any failure (no device, no driver, no encoder) means "not usable"
        return False


def pick_video_codec(prefer_nvenc: bool) -> str:
    """``"h264_nvenc"`` when asked for and it can actually encode here, else ``"libx264"``."""
    if prefer_nvenc and _encoder_usable("h264_nvenc"):
        return "h264_nvenc"
    return "libx264"


# --------------------------------------------------------------------------------------------
# encode


def bgr_to_i420(img: np.ndarray) -> np.ndarray:
    """BGR uint8 ``h x w x 3`` (``h``, ``w`` even) -> yuv420p as a ``(h * 3 // 2, w)`` uint8 array.

    BT.601, limited range, every sample rounded to nearest (unbiased): luma from OpenCV's
    ``COLOR_BGR2YUV_I420`` (exact to within fixed-point error), chroma computed from the 2x2 box
    average of the BGR pixels (OpenCV's I420 conversion point-samples the chroma, which aliases).
    This is the layout ``av.VideoFrame.from_ndarray(..., format="yuv420p")`` expects: the Y plane,
    then the U plane, then the V plane, each flattened row by row.
    """
    h, w = img.shape[:2]
    out = cv2.cvtColor(img, cv2.COLOR_BGR2YUV_I420)
    # 2x2 box average of 4*BGR in uint16 = the exact 2x2 sum (a uint8 INTER_AREA average would be
    # rounded to an integer first, which biases the chroma on some content, e.g. gradients).
    x4 = img.astype(np.uint16)
    x4 <<= 2
    sums = cv2.resize(x4, (w // 2, h // 2), interpolation=cv2.INTER_AREA)
    cbcr = cv2.transform(sums, _SUM4_TO_CBCR)  # float math, rounded to nearest (values 16..240)
    flat = out.reshape(-1)
    q = (h // 2) * (w // 2)
    np.copyto(flat[h * w:h * w + q].reshape(h // 2, w // 2), cbcr[..., 0], casting="unsafe")
    np.copyto(flat[h * w + q:h * w + 2 * q].reshape(h // 2, w // 2), cbcr[..., 1], casting="unsafe")
    return out


def encode_segment(frames: Iterable[np.ndarray], out_path, fps: Fraction, width: int, height: int,
                   codec: str = "libx264", crf: int = 18, preset: str = "veryfast") -> int:
    """Encode BGR uint8 ``height x width x 3`` frames as one independent H.264 MP4 segment.

    Streams the frames (one in memory at a time). Returns the number of frames written.
    """
    out_path = Path(out_path)
    fps = _check_fps(fps)
    if not (isinstance(width, (int, np.integer)) and isinstance(height, (int, np.integer))):
        raise InvalidParameterError(f"{out_path}: width/height must be integers, got {width!r}x{height!r}",
                                    path=str(out_path), stage=_STAGE)
    width, height = int(width), int(height)
    if width <= 0 or height <= 0 or width % 2 or height % 2:
        raise InvalidParameterError(
            f"{out_path}: segment size must be positive and even for yuv420p, got {width}x{height}",
            path=str(out_path), stage=_STAGE)
    if not 0 <= int(crf) <= 51:
        raise InvalidParameterError(f"crf must be within 0..51, got {crf}", stage=_STAGE)
    n = 0
    with _atomic_output(out_path, "encoding the segment") as tmp:
        with av.open(str(tmp), "w", format="mp4") as out:
            try:
                stream = _open_video_encoder_stream(out, codec, fps, width, height, int(crf), preset)
            except (av.FFmpegError, ValueError) as exc:
                raise InternalError(f"{out_path}: cannot create the {codec} encoder: {exc}",
                                    path=str(out_path), stage=_STAGE) from exc
            for img in frames:
                if not isinstance(img, np.ndarray) or img.dtype != np.uint8 or img.shape != (height, width, 3):
                    got = (f"{img.dtype} {img.shape}" if isinstance(img, np.ndarray) else type(img).__name__)
                    raise InvalidParameterError(
                        f"{out_path}: frame {n} must be uint8 ({height}, {width}, 3) BGR, got {got}",
                        path=str(out_path), stage=_STAGE)
                vf = av.VideoFrame.from_ndarray(bgr_to_i420(np.ascontiguousarray(img)), format="yuv420p")
                vf.colorspace = _AVCOL_SPC_SMPTE170M
                vf.color_range = _AVCOL_RANGE_MPEG
                vf.pts = n
                vf.time_base = Fraction(1) / fps
                for packet in stream.encode(vf):
                    out.mux(packet)
                n += 1
            if n == 0:
                raise InvalidParameterError(f"{out_path}: a segment needs at least one frame",
                                            path=str(out_path), stage=_STAGE)
            for packet in stream.encode(None):
                out.mux(packet)
    return n


# --------------------------------------------------------------------------------------------
# join


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
        container = av.open(path, "r")
    except (av.FFmpegError, OSError, ValueError) as exc:
        raise InternalError(f"cannot open segment {path}: {exc}", path=path, stage=_STAGE) from exc
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
    fps = _check_fps(fps)
    segment_paths = [str(p) for p in segment_paths]
    if not segment_paths:
        raise InvalidParameterError(f"{out_path}: no segments to join", path=str(out_path), stage=_STAGE)
    if not os.path.isfile(audio_path):
        raise UnreadableFileError(f"audio file does not exist: {audio_path}", path=audio_path, stage=_STAGE)
    try:
        audio_in = av.open(audio_path, "r")
    except (av.FFmpegError, OSError, ValueError) as exc:
        raise UnreadableFileError(f"cannot open {audio_path} as media: {exc}", path=audio_path,
                                  stage=_STAGE) from exc
    try:
        with _atomic_output(out_path, "joining the segments") as tmp:
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


__all__ = ["pick_video_codec", "encode_segment", "join_segments", "bgr_to_i420"]
