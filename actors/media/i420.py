"""yuv420p frames as one ``(h * 3 // 2, w)`` uint8 array (I420: the Y plane, then U, then V).

The segment writer keeps template frames in this form and converts only the rectangle a paste
touches to BGR and back (:func:`region_to_bgr`, :func:`write_region`), so every other pixel keeps
the template's decoded samples exactly, with no colour conversion at all.

Why a sub-rectangle round-trips like the whole frame: both directions work per 2x2 block. BGR
from I420 uses each pixel's luma and its block's chroma sample (``color.i420_to_bgr``); I420 from
BGR takes luma per pixel and chroma from the block's 2x2 sum (``encode.bgr_to_i420``). A rectangle
with even corners is a union of whole blocks, so it converts to the same values a full-frame
conversion of the same pixels gives.
"""

from __future__ import annotations

import numpy as np

from actors.media.color import i420_to_bgr, rotate_upright, snap_rotation
from actors.media.encode import bgr_to_i420

Rect = tuple[int, int, int, int]  # x1, y1, x2, y2 (exclusive ends)


def frame_size(i420: np.ndarray) -> tuple[int, int]:
    """(width, height) of an I420 array."""
    return int(i420.shape[1]), int(i420.shape[0]) * 2 // 3


def planes(i420: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Views of the Y (h x w), U and V (h/2 x w/2) planes of an I420 array (writable if it is)."""
    w, h = frame_size(i420)
    flat = i420.reshape(-1)
    q = (h // 2) * (w // 2)
    return (i420[:h], flat[h * w:h * w + q].reshape(h // 2, w // 2),
            flat[h * w + q:h * w + 2 * q].reshape(h // 2, w // 2))


def from_planes(y: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Y, U, V planes -> a new C-contiguous I420 array."""
    h, w = y.shape
    out = np.empty((h * 3 // 2, w), np.uint8)
    oy, ou, ov = planes(out)
    oy[...], ou[...], ov[...] = y, u, v
    return out


def rotate_i420(i420: np.ndarray, rotation: int) -> np.ndarray:
    """Turn an I420 frame upright (clockwise display rotation 0/90/180/270), plane by plane.

    With even sides every 2x2 block maps onto a 2x2 block, so rotating the chroma planes is exact:
    the result equals the BGR conversion of the frame, rotated.
    """
    rotation = snap_rotation(rotation)
    if rotation == 0:
        return i420
    return from_planes(*(rotate_upright(p, rotation) for p in planes(i420)))


def even_rect(rect: Rect, width: int, height: int) -> Rect:
    """``rect`` grown outwards to even coordinates (whole chroma blocks), clipped to the frame;
    an empty rectangle stays empty (``x2 <= x1`` or ``y2 <= y1``)."""
    x1, y1, x2, y2 = (int(v) for v in rect)
    if x2 <= x1 or y2 <= y1:
        return x1, y1, x1, y1
    x1, y1 = max(0, x1 - x1 % 2), max(0, y1 - y1 % 2)
    x2, y2 = min(int(width), x2 + x2 % 2), min(int(height), y2 + y2 % 2)
    return x1, y1, x2, y2


def _check_even(i420: np.ndarray, rect: Rect) -> tuple[int, int, int, int]:
    w, h = frame_size(i420)
    x1, y1, x2, y2 = rect
    if (x1 % 2 or y1 % 2 or x2 % 2 or y2 % 2 or not (0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h)):
        raise ValueError(f"rectangle {rect} is not a non-empty even-aligned part of a {w}x{h} frame")
    return x1, y1, x2, y2


def region_i420(i420: np.ndarray, rect: Rect) -> np.ndarray:
    """The even-aligned ``rect`` of an I420 frame as a new, smaller I420 array."""
    x1, y1, x2, y2 = _check_even(i420, rect)
    y, u, v = planes(i420)
    cx1, cy1, cx2, cy2 = x1 // 2, y1 // 2, x2 // 2, y2 // 2
    return from_planes(y[y1:y2, x1:x2], u[cy1:cy2, cx1:cx2], v[cy1:cy2, cx1:cx2])


def region_to_bgr(i420: np.ndarray, rect: Rect) -> np.ndarray:
    """The even-aligned ``rect`` of a BT.601 limited-range I420 frame as BGR uint8, converted
    exactly as a full-frame decode converts it (``color.i420_to_bgr``)."""
    return i420_to_bgr(region_i420(i420, rect))


def write_region(i420: np.ndarray, rect: Rect, bgr: np.ndarray) -> None:
    """Convert ``bgr`` (the size of the even-aligned ``rect``) with ``encode.bgr_to_i420``'s maths
    and write it into ``rect`` of the I420 frame, in place."""
    x1, y1, x2, y2 = _check_even(i420, rect)
    if bgr.shape != (y2 - y1, x2 - x1, 3):
        raise ValueError(f"BGR region {bgr.shape} does not fit rectangle {rect}")
    sy, su, sv = planes(bgr_to_i420(np.ascontiguousarray(bgr)))
    y, u, v = planes(i420)
    cx1, cy1, cx2, cy2 = x1 // 2, y1 // 2, x2 // 2, y2 // 2
    y[y1:y2, x1:x2] = sy
    u[cy1:cy2, cx1:cx2] = su
    v[cy1:cy2, cx1:cx2] = sv
