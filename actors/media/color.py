"""Decoded video frames as upright BGR uint8, with unbiased colour conversion.

Frames are converted to BGR with every sample rounded to nearest (unbiased), see :func:`yuv_to_bgr`.
8-bit yuv420p in BT.601 limited range (what ``actors/media/encode.py`` produces, and what FFmpeg assumes
for untagged video) goes through OpenCV's ``COLOR_YUV2BGR_I420``; BT.709 and/or full-range 8-bit 4:2:0
(or a frame with sub-black luma) through the matching matrix (``cv2.transform``, rounded); anything else
through swscale with ``ACCURATE_RND | FULL_CHR_H_INT``. swscale's default (fast) path is biased (about
-0.5 to -1.5 levels per conversion), which made each decode/encode generation darker.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
from av.video.reformatter import Interpolation


def snap_rotation(degrees: float) -> int:
    """Normalise any angle to the nearest of 0/90/180/270."""
    if degrees is None or (isinstance(degrees, float) and math.isnan(degrees)):
        return 0
    return int(round(float(degrees) / 90.0)) % 4 * 90


def rotate_upright(img: np.ndarray, rotation: int) -> np.ndarray:
    """Turn a stored picture upright, given the clockwise display rotation (0/90/180/270).

    ``np.rot90(img, k)`` turns an image counter-clockwise by ``90*k`` degrees, so a clockwise turn of
    ``rotation`` degrees is ``k = -rotation/90``. Returns a C-contiguous array.
    """
    rotation = snap_rotation(rotation)
    if rotation == 0:
        return img
    return np.ascontiguousarray(np.rot90(img, k=(-rotation // 90) % 4))


# AVColorSpace / AVColorRange values (libavutil/pixfmt.h).
_AVCOL_SPC_BT709 = 1
_AVCOL_SPC_UNSPECIFIED = 2
_AVCOL_SPC_BT470BG = 5
_AVCOL_SPC_SMPTE170M = 6
_AVCOL_RANGE_UNSPECIFIED = 0
_AVCOL_RANGE_MPEG = 1
_AVCOL_RANGE_JPEG = 2
# (Kr, Kb) of the matrices handled without swscale; an untagged stream is BT.601, as in swscale.
_MATRIX_KR_KB = {
    _AVCOL_SPC_UNSPECIFIED: (0.299, 0.114),
    _AVCOL_SPC_BT470BG: (0.299, 0.114),
    _AVCOL_SPC_SMPTE170M: (0.299, 0.114),
    _AVCOL_SPC_BT709: (0.2126, 0.0722),
}
# swscale's default yuv -> rgb path truncates; these flags make it round to nearest (and interpolate
# chroma), so the fallback is unbiased too.
_SWS_ACCURATE = Interpolation.BILINEAR | Interpolation.ACCURATE_RND | Interpolation.FULL_CHR_H_INT


def _yuv_to_bgr_matrix(kr: float, kb: float, full_range: bool) -> np.ndarray:
    """3x4 float32 matrix mapping (Y, Cb, Cr, 1) to (B, G, R) for ``cv2.transform``."""
    kg = 1.0 - kr - kb
    ys, cs = (1.0, 1.0) if full_range else (255.0 / 219.0, 255.0 / 224.0)
    y0 = 0.0 if full_range else 16.0
    # R = Y' + 2(1-Kr) Cr', B = Y' + 2(1-Kb) Cb', G = (Y' - Kr R - Kb B) / Kg
    rows = np.array([
        [ys, 2.0 * (1.0 - kb) * cs, 0.0],                                            # B
        [ys, -2.0 * kb * (1.0 - kb) / kg * cs, -2.0 * kr * (1.0 - kr) / kg * cs],    # G
        [ys, 0.0, 2.0 * (1.0 - kr) * cs],                                            # R
    ])
    offset = -(rows @ np.array([y0, 128.0, 128.0]))
    # cv2.transform evaluates 8-bit 3x3 transforms in 10-bit fixed point. Use coefficients that are
    # exact multiples of 1/1024 (so the float and fixed-point paths agree), and fold their rounding
    # error into the offset at mid-grey, so the quantisation leaves no bias (error <= ~0.05 level).
    q = np.round(rows * 1024.0) / 1024.0
    mid = np.array([(y0 + (255.0 if full_range else 235.0)) / 2.0, 128.0, 128.0])
    offset = np.round((offset + (rows - q) @ mid) * 1024.0) / 1024.0
    return np.hstack([q, offset[:, None]]).astype(np.float32)


_YUV_TO_BGR = {(cs, full): _yuv_to_bgr_matrix(kr, kb, full)
               for cs, (kr, kb) in _MATRIX_KR_KB.items() for full in (False, True)}


def _i420_matrix_to_bgr(i420: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """yuv420p ``(h*3/2, w)`` -> BGR with ``matrix`` (see :func:`_yuv_to_bgr_matrix`), rounded.

    Chroma is upsampled by sample repetition, as OpenCV's ``COLOR_YUV2BGR_I420`` does.
    """
    h, w = i420.shape[0] * 2 // 3, i420.shape[1]
    flat = i420.reshape(-1)
    q = (h // 2) * (w // 2)
    u = flat[h * w:h * w + q].reshape(h // 2, w // 2)
    v = flat[h * w + q:h * w + 2 * q].reshape(h // 2, w // 2)
    yuv = cv2.merge([i420[:h],
                     cv2.resize(u, (w, h), interpolation=cv2.INTER_NEAREST),
                     cv2.resize(v, (w, h), interpolation=cv2.INTER_NEAREST)])
    return cv2.transform(yuv, matrix)


def i420_to_bgr(i420: np.ndarray, colorspace: int = _AVCOL_SPC_UNSPECIFIED, full_range: bool = False) -> np.ndarray:
    """A yuv420p ``(h*3/2, w)`` uint8 array (even ``h``, ``w``) -> BGR, rounded to nearest.

    ``colorspace`` is an AVColorSpace handled here (untagged, BT.601 or BT.709). Every output pixel
    depends on its own luma sample and its 2x2 block's chroma only, so converting a sub-rectangle
    aligned to even coordinates gives the same pixels as converting the whole frame (up to the
    choice below between OpenCV's BT.601 path and the exact matrix, which agree to within a level).
    """
    h = i420.shape[0] * 2 // 3
    if (not full_range and _MATRIX_KR_KB[colorspace] == (0.299, 0.114)
            and int(i420[:h].min()) >= 16):
        # BT.601 limited: OpenCV's own conversion (fastest). It clamps Y below 16 up to 16
        # before the matrix, which is wrong for sub-black pixels with colour: those frames take
        # the exact matrix path below.
        return cv2.cvtColor(i420, cv2.COLOR_YUV2BGR_I420)
    return _i420_matrix_to_bgr(i420, _YUV_TO_BGR[(colorspace, full_range)])


def is_bt601_limited_i420(frame) -> bool:
    """Whether a decoded frame is 8-bit yuv420p, even-sized, in BT.601 (or untagged) limited range:
    exactly the samples ``actors/media/encode.py`` writes and tags, so they can be kept as they are."""
    try:
        color_range = int(frame.color_range)
        colorspace = int(frame.colorspace)
    except Exception:  # pragma: no cover
        return False
    return (frame.format.name == "yuv420p" and color_range != _AVCOL_RANGE_JPEG
            and _MATRIX_KR_KB.get(colorspace) == (0.299, 0.114)
            and frame.width > 0 and frame.height > 0 and frame.width % 2 == 0 and frame.height % 2 == 0)


def yuv_to_bgr(frame) -> np.ndarray:
    """A decoded video frame as BGR uint8 ``h x w x 3``, every sample rounded to nearest.

    8-bit 4:2:0 with even size in BT.601 / BT.709 (or untagged = BT.601), limited or full range, is
    converted here with the frame's matrix and range; any other frame by swscale with accurate
    rounding (``src_color_range`` from the frame, the matrix from the frame's colorspace tag).
    """
    fmt = frame.format.name
    try:
        color_range = int(frame.color_range)
        colorspace = int(frame.colorspace)
    except Exception:  # pragma: no cover
        color_range, colorspace = _AVCOL_RANGE_UNSPECIFIED, _AVCOL_SPC_UNSPECIFIED
    if (fmt in ("yuv420p", "yuvj420p") and colorspace in _MATRIX_KR_KB
            and frame.width % 2 == 0 and frame.height % 2 == 0 and frame.width > 0 and frame.height > 0):
        full = fmt == "yuvj420p" or color_range == _AVCOL_RANGE_JPEG
        return i420_to_bgr(frame.to_ndarray(), colorspace, full)
    kwargs = {"interpolation": _SWS_ACCURATE}
    if color_range:
        kwargs["src_color_range"] = color_range
    try:
        return frame.to_ndarray(format="bgr24", **kwargs)
    except Exception:  # pragma: no cover - odd colour tags swscale refuses
        return frame.to_ndarray(format="bgr24", interpolation=_SWS_ACCURATE)
