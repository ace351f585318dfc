"""Cut the face out of a frame and paste a generated mouth region back in.

* :func:`crop_box` - the Wav2Lip-style padded crop box of a detected face, clipped to the frame.
* :func:`extract_crop` - that region resized to the generator's square input.
* :func:`lower_face_mask` - a feathered ellipse over the mouth and jaw, exactly 0 elsewhere.
* :func:`composite` - blend a generated crop back into the frame through that mask, after a
  per-channel colour transfer; every pixel where the mask is 0 (the upper face, the crop's borders
  and everything outside the box) stays byte-identical to the input frame.
* :func:`paste_bounds` - the rectangle :func:`composite` reads and writes for a box (the mask's
  non-zero part); ``composite(..., window=...)`` pastes into just that part of a frame.

All images are ``uint8`` BGR ``H x W x 3``. Boxes are ``(x1, y1, x2, y2)`` with exclusive ends.
"""

from __future__ import annotations

import functools
import math
from typing import Sequence

import cv2
import numpy as np

from actors.errors import InvalidParameterError

__all__ = ["crop_box", "extract_crop", "lower_face_mask", "composite", "color_transfer", "paste_bounds",
           "paste_source_window"]

# Mask geometry, as fractions of the crop: an ellipse centred 72 % down, 60 % wide, 44 % high, so its
# top touches the middle row and its bottom stays 6 % above the bottom edge.
MASK_CENTER_Y = 0.72
MASK_WIDTH = 0.60
MASK_HEIGHT = 0.44
# Share of the ellipse's radius that is fully opaque; the rest is a Gaussian feather down to 0.
MASK_CORE = 0.45
MASK_SHARPNESS = 3.0  # Gaussian feather exp(-s*t^2), shifted/rescaled to reach exactly 0 at the rim


def crop_box(box: Sequence[float], frame_w: int, frame_h: int,
             pads: Sequence[float] = (0, 10, 0, 0), relative: bool = False) -> tuple[int, int, int, int]:
    """Padded integer crop box ``(x1, y1, x2, y2)`` of a face box, clipped to the frame.

    ``pads`` = (top, bottom, left, right), in pixels like Wav2Lip's ``--pads`` (default: 10 px more
    below the chin), or, with ``relative=True``, as fractions of the face box's height (top, bottom)
    and width (left, right) so that the padding scales with the face.
    """
    try:
        x1, y1, x2, y2 = (float(v) for v in list(box)[:4])
        top, bottom, left, right = (float(p) for p in pads)
    except (TypeError, ValueError):
        raise InvalidParameterError(f"crop_box needs a box (x1,y1,x2,y2) and four pads, got {box!r}, {pads!r}") from None
    if not all(math.isfinite(v) for v in (x1, y1, x2, y2, top, bottom, left, right)):
        raise InvalidParameterError(f"crop_box got a non-finite box or pad: {box!r}, {pads!r}")
    if relative:
        bw, bh = x2 - x1, y2 - y1
        top, bottom, left, right = top * bh, bottom * bh, left * bw, right * bw
    cx1 = max(0, int(math.floor(x1 - left)))
    cy1 = max(0, int(math.floor(y1 - top)))
    cx2 = min(int(frame_w), int(math.ceil(x2 + right)))
    cy2 = min(int(frame_h), int(math.ceil(y2 + bottom)))
    if cx2 - cx1 < 2 or cy2 - cy1 < 2:
        raise InvalidParameterError(
            f"face box {tuple(round(v, 1) for v in (x1, y1, x2, y2))} is empty or outside the {frame_w}x{frame_h} frame")
    return cx1, cy1, cx2, cy2


def _int_box(box: Sequence[float], frame: np.ndarray | tuple[int, int]) -> tuple[int, int, int, int]:
    """The box rounded and clipped to the frame (an image, or its ``(w, h)``)."""
    w, h = (frame.shape[1], frame.shape[0]) if isinstance(frame, np.ndarray) else (int(frame[0]), int(frame[1]))
    x1, y1, x2, y2 = (int(round(float(v))) for v in list(box)[:4])
    x1, x2 = max(0, x1), min(w, x2)
    y1, y2 = max(0, y1), min(h, y2)
    if x2 - x1 < 2 or y2 - y1 < 2:
        raise InvalidParameterError(f"box {tuple(box)} is empty or outside the {w}x{h} frame")
    return x1, y1, x2, y2


def _check_image(img: np.ndarray, what: str) -> None:
    if not isinstance(img, np.ndarray) or img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        desc = f"{img.dtype} {img.shape}" if isinstance(img, np.ndarray) else type(img).__name__
        raise InvalidParameterError(f"{what} must be a uint8 HxWx3 BGR image, got {desc}")


def extract_crop(frame: np.ndarray, box: Sequence[float], size: int) -> np.ndarray:
    """The frame's ``box`` region resized to ``size x size`` (``cv2.INTER_AREA``) -> uint8[size, size, 3]."""
    _check_image(frame, "frame")
    if int(size) < 1:
        raise InvalidParameterError(f"crop size must be >= 1, got {size}")
    x1, y1, x2, y2 = _int_box(box, frame)
    return cv2.resize(frame[y1:y2, x1:x2], (int(size), int(size)), interpolation=cv2.INTER_AREA)


def lower_face_mask(h: int, w: int) -> np.ndarray:
    """Feathered elliptical mask over the mouth and jaw of an ``h x w`` face crop -> float32[h, w]
    (a fresh, writable array; see :func:`_cached_mask` for the shared read-only one)."""
    return _cached_mask(int(h), int(w))[0].copy()


@functools.lru_cache(maxsize=64)
def _cached_mask(h: int, w: int) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """(read-only mask, (r0, r1, c0, c1) bounds of its non-zero part). A job pastes into a handful
    of box sizes (one with a fixed box), so the mask is computed once per size, not per frame."""
    m = _lower_face_mask(h, w)
    m.setflags(write=False)
    rows, cols = np.flatnonzero(m.any(axis=1)), np.flatnonzero(m.any(axis=0))
    bounds = (int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1) if rows.size else (0, 0, 0, 0)
    return m, bounds


def _lower_face_mask(h: int, w: int) -> np.ndarray:
    """Feathered elliptical mask over the mouth and jaw of an ``h x w`` face crop -> float32[h, w].

    1 in the ellipse's core, falling off as a Gaussian that is shifted and rescaled to reach exactly
    0 at the ellipse's rim; exactly 0 outside the ellipse, i.e. in the whole upper half of the crop
    and near its left, right and bottom edges.
    """
    h, w = int(h), int(w)
    if h < 1 or w < 1:
        raise InvalidParameterError(f"mask size must be positive, got {h}x{w}")
    ys = (np.arange(h, dtype=np.float64) + 0.5) / h
    xs = (np.arange(w, dtype=np.float64) + 0.5) / w
    dy = (ys - MASK_CENTER_Y) / (MASK_HEIGHT / 2)
    dx = (xs - 0.5) / (MASK_WIDTH / 2)
    r = np.sqrt(dy[:, None] ** 2 + dx[None, :] ** 2)
    t = np.clip((r - MASK_CORE) / (1.0 - MASK_CORE), 0.0, 1.0)
    floor = math.exp(-MASK_SHARPNESS)
    m = (np.exp(-MASK_SHARPNESS * t * t) - floor) / (1.0 - floor)
    m[r >= 1.0] = 0.0
    m[ys < 0.5, :] = 0.0
    return np.clip(m, 0.0, 1.0).astype(np.float32)


# Smallest face box (px, either side) for which :func:`paste_source_window` is exact: below it, the
# area filter of a downscale reaches further into the crop than the window allows.
MIN_EXACT_BOX = 24


@functools.lru_cache(maxsize=16)
def paste_source_window(crop_size: int) -> tuple[int, int, int, int]:
    """``(r0, r1, c0, c1)``: the pixels of a ``crop_size`` generated crop that :func:`composite`
    reads, for any box of at least :data:`MIN_EXACT_BOX` px. Outside it the crop may hold anything
    and the pasted frame is byte-identical (``tests/unit/test_compose.py`` checks this over box sizes
    from 24 to 700 px), so a generator may compute only this window (``wav2lip_window.py``).

    The mask is non-zero on box rows with ``(y + 0.5) / h`` in ``[0.5, MASK_CENTER_Y + MASK_HEIGHT/2)``
    and columns in ``(0.5 - MASK_WIDTH/2, 0.5 + MASK_WIDTH/2)``. Those fractions map to the same
    fractions of the crop; the resize reads around them: bicubic 1 tap before and 2 after the
    source position, the area filter up to half a box pixel (``crop_size / (2 * MIN_EXACT_BOX)``)
    either side. One more pixel of margin each way.
    """
    s = int(crop_size)
    reach = s / (2.0 * MIN_EXACT_BOX)

    def span(f_lo: float, f_hi: float) -> tuple[int, int]:
        lo = min(math.floor(f_lo * s - 0.5) - 1, math.floor(f_lo * s - reach))
        hi = max(math.floor(f_hi * s - 0.5) + 3, math.ceil(f_hi * s + reach))
        return max(0, lo - 1), min(s, hi + 1)

    r0, r1 = span(0.5, MASK_CENTER_Y + MASK_HEIGHT / 2)
    c0, c1 = span(0.5 - MASK_WIDTH / 2, 0.5 + MASK_WIDTH / 2)
    return r0, r1, c0, c1


def color_transfer(src: np.ndarray, ref: np.ndarray, weight: np.ndarray, max_gain: float = 2.0) -> np.ndarray:
    """Per-channel mean/std transfer of ``src`` toward ``ref`` (both float HxWx3), statistics taken
    over ``weight > 0.5``; returns float32 (unclipped). The std gain is limited to
    ``[1/max_gain, max_gain]`` so a flat region cannot blow the colours up."""
    sel = weight > 0.5
    if np.count_nonzero(sel) < 4:
        return src.astype(np.float32)
    # cv2.meanStdDev accumulates in double like numpy's mean/std (population std), ~50x faster
    # than boolean indexing; the two agree to ~1e-13.
    sel8 = np.ascontiguousarray(sel).view(np.uint8)
    s_mean, s_std = (v.ravel() for v in cv2.meanStdDev(np.ascontiguousarray(src, np.float32), mask=sel8))
    r_mean, r_std = (v.ravel() for v in cv2.meanStdDev(np.ascontiguousarray(ref, np.float32), mask=sel8))
    gain = np.where(s_std > 1e-3, r_std / np.maximum(s_std, 1e-3), 1.0)
    gain = np.clip(gain, 1.0 / max_gain, max_gain)
    out = (src.astype(np.float64) - s_mean) * gain + r_mean
    return out.astype(np.float32)


def paste_bounds(box: Sequence[float], frame_w: int, frame_h: int) -> tuple[int, int, int, int]:
    """``(x1, y1, x2, y2)``: the part of a ``frame_w x frame_h`` frame that :func:`composite` with
    the default mask reads or changes for ``box`` (the bounding rectangle of the mask's non-zero
    part); empty (``x2 <= x1``) when the mask is all zero."""
    x1, y1, x2, y2 = _int_box(box, (frame_w, frame_h))
    _, (r0, r1, c0, c1) = _cached_mask(y2 - y1, x2 - x1)
    return x1 + c0, y1 + r0, x1 + c1, y1 + r1


def composite(frame: np.ndarray, box: Sequence[float], generated_crop: np.ndarray,
              original_crop: np.ndarray | None = None, color_match: bool = True,
              mask: np.ndarray | None = None, inplace: bool = False,
              window: tuple[int, int, int, int] | None = None) -> np.ndarray:
    """Blend ``generated_crop`` into ``frame`` at ``box`` and return a new frame.

    The crop is resized to the box, optionally colour-matched (per-channel mean/std over the mask's
    core) to the original region - ``original_crop`` if given (any size; e.g. the crop that was fed
    to the generator), else the frame's own box region - and alpha-blended through
    :func:`lower_face_mask` (or ``mask``, float[h, w] in [0, 1] at the box's size). Pixels where the
    mask is 0, and everything outside the box, are copied unchanged. With ``inplace`` the frame
    itself is written and returned (no full-frame copy; for a caller that owns the frame).

    All the per-pixel work is done on the bounding rectangle of the mask's non-zero part only
    (about a quarter of the box with the default mask); the colour statistics are taken over the
    mask's core, which lies inside it, so the result is the same as over the whole box.

    ``window = (x, y, frame_w, frame_h)``: ``frame`` is only the part of a ``frame_w x frame_h``
    frame whose top-left pixel is ``(x, y)``, and ``box`` is in the whole frame's coordinates. The
    part must hold the mask's non-zero rectangle (:func:`paste_bounds`); the pasted pixels are
    then exactly those of a paste into the whole frame. Lets a caller convert only that part.
    """
    _check_image(frame, "frame")
    _check_image(generated_crop, "generated crop")
    if window is None:
        ox, oy = 0, 0
        x1, y1, x2, y2 = _int_box(box, frame)
    else:
        ox, oy, full_w, full_h = (int(v) for v in window)
        x1, y1, x2, y2 = _int_box(box, (full_w, full_h))
    bw, bh = x2 - x1, y2 - y1
    gh, gw = generated_crop.shape[:2]
    if mask is None:
        m_full, (r0, r1, c0, c1) = _cached_mask(bh, bw)
    else:
        m_full = np.asarray(mask, np.float32)
        if m_full.shape != (bh, bw):
            raise InvalidParameterError(f"mask shape {m_full.shape} does not match the box size {(bh, bw)}")
        m_full = np.clip(m_full, 0.0, 1.0)
        rows, cols = np.flatnonzero(m_full.any(axis=1)), np.flatnonzero(m_full.any(axis=0))
        r0, r1, c0, c1 = ((int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1)
                          if rows.size else (0, 0, 0, 0))
    out = frame if inplace else frame.copy()
    if r1 <= r0 or c1 <= c0:  # an all-zero mask changes nothing
        return out
    # From here on in the coordinates of ``frame`` (a part of the whole frame with a window).
    x1, y1 = x1 - ox, y1 - oy
    fh, fw = frame.shape[:2]
    if x1 + c0 < 0 or y1 + r0 < 0 or x1 + c1 > fw or y1 + r1 > fh:
        raise InvalidParameterError(
            f"the {fw}x{fh} window at {(ox, oy)} does not hold the paste region of box {tuple(box)}")
    interp = cv2.INTER_AREA if (gw > bw and gh > bh) else cv2.INTER_CUBIC
    gen = cv2.resize(generated_crop, (bw, bh), interpolation=interp)[r0:r1, c0:c1].astype(np.float32)
    m = m_full[r0:r1, c0:c1]
    region = frame[y1 + r0:y1 + r1, x1 + c0:x1 + c1]
    if color_match:
        if original_crop is not None:
            _check_image(original_crop, "original crop")
            ref = original_crop
            if ref.shape[:2] != (bh, bw):
                ref = cv2.resize(ref, (bw, bh), interpolation=cv2.INTER_AREA)
            ref = ref[r0:r1, c0:c1]
        else:
            ref = region
        gen = color_transfer(gen, ref.astype(np.float32), m)
    a = m[..., None]
    blended = region.astype(np.float32) * (1.0 - a) + gen * a
    blended = np.clip(np.rint(blended), 0, 255).astype(np.uint8)
    zero = m <= 0.0
    blended[zero] = region[zero]
    out[y1 + r0:y1 + r1, x1 + c0:x1 + c1] = blended
    return out
