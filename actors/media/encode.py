"""Encoding: BGR or yuv420p frames -> one independent, closed-GOP H.264 segment (``join.py`` joins them with the audio).

Plain Python over PyAV (no Ray, no ffmpeg CLI).

Design
------
* :func:`encode_segment` writes one **MP4 file per segment**. Every segment gets a fresh encoder,
  so it starts with an IDR frame and is a closed GOP; B-frames are off, so decode order equals
  presentation order and ``dts == pts``. Frame ``k`` of a segment has ``pts = k`` in ``1/fps``.
  The file is written to a hidden temporary name in the same directory and ``os.replace``'d onto
  ``out_path``: re-encoding the same segment (a retry) atomically replaces it.

Pixels: BGR uint8 frames are converted to yuv420p with the BT.601 matrix (swscale's default) in
limited range, and the stream is tagged accordingly (``colorspace=smpte170m, range=tv``) so players
and decoders agree on the colours. The conversion is done with OpenCV (:func:`bgr_to_i420`), rounded
to nearest: swscale's default bgr24 -> yuv420p path truncates (luma about -0.5, chroma about -1 level
per conversion) and, with its equally biased yuv -> bgr path, made every decode/encode generation
~2 levels darker. Chroma is the 2x2 box average (the same as swscale's). yuv420p input (an I420 array, or an
``av.VideoFrame``) is taken to hold BT.601 limited-range samples already and is encoded as it is,
with no conversion: the segment writer passes template frames that way and only converts the
pasted face region (``actors/segment_writer.py``).
"""

from __future__ import annotations

import functools
from fractions import Fraction
from pathlib import Path
from typing import Iterable

import av
import cv2
import numpy as np

from actors.errors import InternalError, InvalidParameterError
from actors.media.atomic import atomic_output

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


def check_fps(fps) -> Fraction:
    try:
        fps = Fraction(fps)
    except (TypeError, ValueError) as exc:
        raise InvalidParameterError(f"fps must be a positive number, got {fps!r}", stage=_STAGE) from exc
    if fps <= 0 or fps > 1000:
        raise InvalidParameterError(f"fps must be in (0, 1000], got {fps}", stage=_STAGE)
    return fps


def _encoder_options(codec: str, crf: int, preset: str, x264_params: str = "", threads: int = 0) -> dict[str, str]:
    if codec == "libx264":
        # open_gop=0 is x264's default; say it anyway: each segment must be a closed GOP.
        params = "open_gop=0" + (f":{x264_params}" if x264_params else "")
        opts = {"crf": str(crf), "preset": str(preset), "bf": "0", "x264-params": params}
        if threads:
            opts["threads"] = str(int(threads))
        return opts
    if codec.endswith("_nvenc"):
        # NVENC has its own preset names (p1..p7); constant-quality VBR is the CRF analogue.
        return {"preset": "p4", "tune": "hq", "rc": "vbr", "cq": str(crf), "b": "0", "bf": "0"}
    return {}


def _open_video_encoder_stream(out, codec: str, fps: Fraction, width: int, height: int,
                               crf: int, preset: str, x264_params: str = "", threads: int = 0):
    stream = out.add_stream(codec, rate=fps)
    stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
    cc = stream.codec_context
    cc.time_base = Fraction(1) / fps
    cc.max_b_frames = 0
    cc.colorspace = _AVCOL_SPC_SMPTE170M
    cc.color_range = _AVCOL_RANGE_MPEG
    cc.options = _encoder_options(codec, crf, preset, x264_params, threads)
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


def _video_frame(img, n: int, width: int, height: int, out_path: Path) -> av.VideoFrame:
    """One input frame -> a yuv420p ``av.VideoFrame`` (BGR converted, yuv420p taken as it is)."""
    if isinstance(img, np.ndarray) and img.dtype == np.uint8:
        if img.shape == (height, width, 3):
            return av.VideoFrame.from_ndarray(bgr_to_i420(np.ascontiguousarray(img)), format="yuv420p")
        if img.shape == (height * 3 // 2, width):
            return av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="yuv420p")
    if (isinstance(img, av.VideoFrame) and img.format.name == "yuv420p"
            and (img.width, img.height) == (width, height)):
        return img
    if isinstance(img, np.ndarray):
        got = f"{img.dtype} {img.shape}"
    elif isinstance(img, av.VideoFrame):
        got = f"a {img.format.name} {img.width}x{img.height} VideoFrame"
    else:
        got = type(img).__name__
    raise InvalidParameterError(
        f"{out_path}: frame {n} must be uint8 ({height}, {width}, 3) BGR or ({height * 3 // 2}, {width}) "
        f"yuv420p, got {got}", path=str(out_path), stage=_STAGE)


def encode_segment(frames: Iterable, out_path, fps: Fraction, width: int, height: int,
                   codec: str = "libx264", crf: int = 18, preset: str = "veryfast", x264_params: str = "",
                   threads: int = 0) -> int:
    """Encode frames as one independent H.264 MP4 segment. Each frame is BGR uint8
    ``height x width x 3``, or yuv420p in BT.601 limited range: an I420 uint8
    ``(height * 3 // 2, width)`` array (Y, U, V planes) or a yuv420p ``av.VideoFrame``.

    ``x264_params``: extra ``key=value:...`` x264 options on top of ``preset`` (libx264 only).
    ``threads``: x264's threads (0: its automatic count, 1.5 per core).
    Streams the frames (one in memory at a time). Returns the number of frames written.
    """
    out_path = Path(out_path)
    fps = check_fps(fps)
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
    with atomic_output(out_path, "encoding the segment") as tmp:
        with av.open(str(tmp), "w", format="mp4") as out:
            try:
                stream = _open_video_encoder_stream(out, codec, fps, width, height, int(crf), preset, x264_params,
                                                    int(threads))
            except (av.FFmpegError, ValueError) as exc:
                raise InternalError(f"{out_path}: cannot create the {codec} encoder: {exc}",
                                    path=str(out_path), stage=_STAGE) from exc
            for img in frames:
                vf = _video_frame(img, n, width, height, out_path)
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
