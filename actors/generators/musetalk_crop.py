"""MuseTalk 1.5's face crop geometry, as plain functions for the avatar code.

The reference crops ``frame[y1:y2, x1:x2]`` - a box that is *not* square - and resizes it to
256x256 with ``cv2.INTER_LANCZOS4``; the generated crop is resized back to the same box (bilinear)
before blending. The box comes from 68 face landmarks:

* ``x1, x2`` = min / max landmark x, ``y2`` = max landmark y (the chin);
* ``y_c`` = landmark 29's y (the middle of the nose bridge) + ``bbox_shift`` (0 in v1.5), and
  ``y1 = max(0, y_c - (y2 - y_c))``: the box's upper half mirrors the nose-to-chin distance, so the
  crop's lower half - the part MuseTalk regenerates - is exactly nose-to-chin;
* v1.5 then adds ``extra_margin`` (10 px) below the chin, capped at the frame height.

A degenerate landmark box (or ``x1 < 0``) falls back to the detector's box.

With a detector's five points (YuNet: eyes, nose tip, mouth corners) :func:`crop_box_from_five_points`
anchors on the nose: the 68-point layout spaces landmarks 27-30 evenly down the nose bridge, from
the eye line (27) to the tip (30), so landmark 29 sits 2/3 of the way from the eyes' mean height to
the nose tip; the box's sides and chin still come from the detector box.

With boxes only, :func:`crop_box_from_face_box` is an **approximation**: it assumes the detector
box spans the landmarks' extent (brows to chin, jaw side to jaw side) and places landmark 29 at ``NOSE_MID_FRACTION`` of the box height, the value
of the common normalised 68-point mean face. It has not been calibrated against landmark boxes
on real templates; a detector whose boxes include the forehead should lower the fraction.
"""

from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np

from actors.errors import InvalidParameterError

CROP_SIZE = 256
CROP_INTERPOLATION = cv2.INTER_LANCZOS4
PASTE_INTERPOLATION = cv2.INTER_LINEAR
EXTRA_MARGIN = 10  # px below the chin, v1.5
BBOX_SHIFT = 0  # px added to landmark 29's y, v1.5
NOSE_MID_LANDMARK = 29
NOSE_MID_FRACTION = 0.39  # landmark 29's height in the mean face's landmark box (0 = brows, 1 = chin)


def _finish(x1: float, y1: float, x2: float, y2: float, frame_h: int, extra_margin: int) -> tuple[int, int, int, int]:
    x1, y1, x2, y2 = int(x1), int(max(0, y1)), int(x2), int(y2)
    y2 = min(y2 + int(extra_margin), int(frame_h))
    if x2 - x1 < 2 or y2 - y1 < 2 or x1 < 0:
        raise InvalidParameterError(f"MuseTalk crop box {(x1, y1, x2, y2)} is degenerate for a frame of height {frame_h}")
    return x1, y1, x2, y2


def crop_box_from_landmarks(landmarks: np.ndarray, frame_h: int, bbox_shift: int = BBOX_SHIFT,
                            extra_margin: int = EXTRA_MARGIN) -> tuple[int, int, int, int]:
    """The reference's crop box ``(x1, y1, x2, y2)`` (exclusive ends) from 68 ``(x, y)`` landmarks.

    Raises ``InvalidParameterError`` when the box is degenerate; the caller then uses the
    detector box (:func:`crop_box_from_face_box`), as the reference does.
    """
    pts = np.asarray(landmarks, dtype=np.float64)
    if pts.shape != (68, 2) or not np.isfinite(pts).all():
        raise InvalidParameterError(f"MuseTalk crop needs 68 finite (x, y) landmarks, got shape {pts.shape}")
    pts = pts.astype(np.int32)  # the reference works on int32 keypoints
    y_c = int(pts[NOSE_MID_LANDMARK, 1]) + int(bbox_shift)
    y2 = int(pts[:, 1].max())
    return _finish(pts[:, 0].min(), y_c - (y2 - y_c), pts[:, 0].max(), y2, frame_h, extra_margin)


def crop_box_from_face_box(box: Sequence[float], frame_h: int, nose_mid_fraction: float = NOSE_MID_FRACTION,
                           extra_margin: int = EXTRA_MARGIN) -> tuple[int, int, int, int]:
    """An approximation of the landmark crop box from a detector box ``(x1, y1, x2, y2)``."""
    try:
        x1, y1, x2, y2 = (float(v) for v in list(box)[:4])
    except (TypeError, ValueError):
        raise InvalidParameterError(f"MuseTalk crop needs a face box (x1, y1, x2, y2), got {box!r}") from None
    if not all(np.isfinite([x1, y1, x2, y2])) or x2 <= x1 or y2 <= y1:
        raise InvalidParameterError(f"MuseTalk crop got an empty or non-finite face box {box!r}")
    y_c = y1 + float(nose_mid_fraction) * (y2 - y1)
    return _finish(max(0.0, x1), y_c - (y2 - y_c), x2, y2, frame_h, extra_margin)


def crop_box_from_five_points(box: Sequence[float], points: np.ndarray, frame_h: int,
                              bbox_shift: int = BBOX_SHIFT, extra_margin: int = EXTRA_MARGIN) -> tuple[int, int, int, int]:
    """The crop box from a detector box and its five points (right eye, left eye, nose tip, right
    and left mouth corner), anchored on landmark 29's estimate (see the module docstring)."""
    pts = np.asarray(points, dtype=np.float64)
    if pts.shape != (5, 2) or not np.isfinite(pts).all():
        raise InvalidParameterError(f"MuseTalk crop needs 5 finite (x, y) points, got shape {pts.shape}")
    try:
        x1, _, x2, y2 = (float(v) for v in list(box)[:4])
    except (TypeError, ValueError):
        raise InvalidParameterError(f"MuseTalk crop needs a face box (x1, y1, x2, y2), got {box!r}") from None
    eyes_y, nose_y = float(pts[:2, 1].mean()), float(pts[2, 1])
    if not (np.isfinite([x1, x2, y2]).all() and x2 > x1 and eyes_y < nose_y < y2):
        raise InvalidParameterError(f"MuseTalk crop got face points that do not fit the box {box!r}")
    y_c = eyes_y + (nose_y - eyes_y) * 2.0 / 3.0 + int(bbox_shift)
    return _finish(max(0.0, x1), y_c - (y2 - y_c), x2, y2, frame_h, extra_margin)


def extract_crop(frame: np.ndarray, box: Sequence[int]) -> np.ndarray:
    """``frame[y1:y2, x1:x2]`` resized (not kept square) to 256x256 with Lanczos -> uint8[256,256,3]."""
    x1, y1, x2, y2 = (int(v) for v in box)
    region = frame[max(0, y1):y2, max(0, x1):x2]
    if region.shape[0] < 2 or region.shape[1] < 2:
        raise InvalidParameterError(f"MuseTalk crop box {tuple(box)} is outside the {frame.shape[1]}x{frame.shape[0]} frame")
    return cv2.resize(region, (CROP_SIZE, CROP_SIZE), interpolation=CROP_INTERPOLATION)


def resize_to_box(crop: np.ndarray, box: Sequence[int]) -> np.ndarray:
    """A generated 256x256 crop resized back to the box's ``(x2-x1) x (y2-y1)`` (bilinear)."""
    x1, y1, x2, y2 = (int(v) for v in box)
    return cv2.resize(crop, (x2 - x1, y2 - y1), interpolation=PASTE_INTERPOLATION)
