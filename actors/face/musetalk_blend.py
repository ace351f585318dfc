"""Paste a MuseTalk crop back into its frame, as the reference's ``get_image`` does.

* The blend region is a square on the crop box's centre with half-side
  ``s = int(max(w, h) // 2 * 1.5)`` (:func:`blend_square`); parts outside the frame are ignored.
* :func:`blend_mask` gives that square's alpha (float32 in [0, 1]): the parsing mask (see
  :mod:`actors.face.parsing_mask`) kept only inside the crop box and below the square's middle row,
  then Gaussian-blurred with kernel ``int(ratio * 2s // 2 * 2) + 1`` (ratio 0.05 as ``get_image``;
  MuseTalk's realtime path uses 0.1). Without a parser (no ``79999_iter.pth``) the crop box's lower
  half - the only part MuseTalk regenerates - shrunk by the blur radius on its sides and bottom and
  blurred, so the alpha fades to 0 before the box's edges.
* :func:`paste` resizes the crop to the box (bilinear), puts it into the square and blends the
  square into the frame through the alpha. Where the alpha is 0 the frame is unchanged.
* :func:`alpha_bounds` - where that alpha can be non-zero, in the frame: the writer converts only
  that rectangle of a frame (a paste into a part of the frame holding it gives the same pixels).

Masks only depend on the template frame and its box, so the avatar code can cache them.
"""

from __future__ import annotations

import functools
from typing import Sequence

import cv2
import numpy as np

from actors.errors import InvalidParameterError
from actors.face.parsing_mask import FaceParser
from actors.generators.musetalk_crop import resize_to_box

EXPAND = 1.5
UPPER_BOUNDARY = 0.5  # share of the square above which nothing is blended
BLUR_RATIO = 0.05


def blend_square(box: Sequence[int], expand: float = EXPAND) -> tuple[tuple[int, int, int, int], int]:
    """``((x1, y1, x2, y2), s)``: the square around the crop box (may extend past the frame)."""
    x1, y1, x2, y2 = (int(v) for v in box)
    xc, yc = (x1 + x2) // 2, (y1 + y2) // 2
    s = int(max(x2 - x1, y2 - y1) // 2 * expand)
    return (xc - s, yc - s, xc + s, yc + s), s


def _blur_kernel(width: int, ratio: float) -> int:
    return int(ratio * width // 2 * 2) + 1


def _square_pixels(frame: np.ndarray, square: Sequence[int]) -> np.ndarray:
    """The square cut from the frame, black where it leaves the frame (like PIL's crop)."""
    sx1, sy1, sx2, sy2 = square
    h, w = frame.shape[:2]
    out = np.zeros((sy2 - sy1, sx2 - sx1, 3), np.uint8)
    fx1, fy1, fx2, fy2 = max(0, sx1), max(0, sy1), min(w, sx2), min(h, sy2)
    if fx2 > fx1 and fy2 > fy1:
        out[fy1 - sy1 : fy2 - sy1, fx1 - sx1 : fx2 - sx1] = frame[fy1:fy2, fx1:fx2]
    return out


def blend_mask(frame: np.ndarray, box: Sequence[int], parser: FaceParser | None = None, mode: str = "jaw",
               blur_ratio: float = BLUR_RATIO) -> np.ndarray:
    """``float32[2s, 2s]`` alpha of the blend square (see the module docstring)."""
    square, s = blend_square(box)
    if s < 1:
        raise InvalidParameterError(f"MuseTalk blend box {tuple(box)} is too small")
    x1, y1, x2, y2 = (int(v) for v in box)
    bx1, by1, bx2, by2 = x1 - square[0], y1 - square[1], x2 - square[0], y2 - square[1]
    side = 2 * s
    k = _blur_kernel(side, blur_ratio)
    mask = np.zeros((side, side), np.uint8)
    top = int(side * UPPER_BOUNDARY)
    if parser is not None:
        parsed = parser.mask(_square_pixels(frame, square), mode)
        mask[by1:by2, bx1:bx2] = parsed[by1:by2, bx1:bx2]
    else:
        r = k // 2
        mask[max(top, by1) : by2 - r, bx1 + r : bx2 - r] = 255
    mask[:top] = 0
    if k > 1:
        mask = cv2.GaussianBlur(mask, (k, k), 0)
    return mask.astype(np.float32) / 255.0


@functools.lru_cache(maxsize=64)
def box_alpha(box: tuple[int, int, int, int], blur_ratio: float = BLUR_RATIO) -> np.ndarray:
    """:func:`blend_mask` without a parser (it depends on the box only), read-only and cached: a
    job pastes into a handful of box sizes and positions (one with a fixed box), and the blur is
    most of the paste's CPU time (~1 ms for a 400 px square)."""
    alpha = blend_mask(np.zeros((0, 0, 3), np.uint8), box, None, blur_ratio=blur_ratio)
    alpha.setflags(write=False)
    return alpha


def alpha_bounds(box: Sequence[int], frame_w: int, frame_h: int, blur_ratio: float = BLUR_RATIO,
                 parsed: bool = True) -> tuple[int, int, int, int]:
    """``(x1, y1, x2, y2)``, clipped to the frame, outside which :func:`blend_mask`'s alpha for
    ``box`` is 0 - with a parser (``parsed``), or without one (tighter). Before the blur the alpha
    lies inside the crop box below the square's middle row (``top``); without a parser also ``r`` in
    from the box's sides and bottom. A Gaussian blur of kernel ``k = 2r + 1`` spreads it by ``r``
    pixels at most (its border reflection stays inside the square)."""
    (sx1, sy1, sx2, sy2), s = blend_square(box)
    x1, y1, x2, y2 = (int(v) for v in box)
    r = _blur_kernel(2 * s, blur_ratio) // 2
    top = sy1 + int(2 * s * UPPER_BOUNDARY)
    grow = r if parsed else 0
    return (max(0, sx1, x1 - grow), max(0, sy1, max(top, y1) - r),
            min(int(frame_w), sx2, x2 + grow), min(int(frame_h), sy2, y2 + grow))


def paste(frame: np.ndarray, crop: np.ndarray, box: Sequence[int], alpha: np.ndarray) -> np.ndarray:
    """A new frame with the generated ``crop`` (any size, BGR) blended in at ``box`` through ``alpha``
    (from :func:`blend_mask` for the same box)."""
    square, s = blend_square(box)
    if alpha.shape != (2 * s, 2 * s):
        raise InvalidParameterError(f"blend alpha {alpha.shape} does not fit the blend square of box {tuple(box)}")
    x1, y1, x2, y2 = (int(v) for v in box)
    pixels = _square_pixels(frame, square)
    pixels[y1 - square[1] : y2 - square[1], x1 - square[0] : x2 - square[0]] = resize_to_box(crop, box)
    h, w = frame.shape[:2]
    fx1, fy1, fx2, fy2 = max(0, square[0]), max(0, square[1]), min(w, square[2]), min(h, square[3])
    out = frame.copy()
    if fx2 <= fx1 or fy2 <= fy1:
        return out
    sl = (slice(fy1 - square[1], fy2 - square[1]), slice(fx1 - square[0], fx2 - square[0]))
    a = alpha[sl][..., None]
    region = frame[fy1:fy2, fx1:fx2].astype(np.float32)
    blended = np.rint(region * (1.0 - a) + pixels[sl].astype(np.float32) * a)
    out[fy1:fy2, fx1:fx2] = np.clip(blended, 0, 255).astype(np.uint8)
    return out
