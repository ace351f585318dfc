"""Follow the main face through a template video.

The detector runs on every ``detect_every``-th frame and on the last one (the "key frames"); boxes of
the frames in between are linearly interpolated and then smoothed with a centred moving average,
the way Wav2Lip smooths its per-frame boxes. Frames are consumed one at a time (only the most recent
frame is held, so that the last one can be scanned), so a long template never sits in memory.

The *main face* is chosen once and then followed: at the first successful detection it is the
largest box among the confident ones (score at least 3/4 of the best score); afterwards it is the detection that overlaps the previous main face best (IoU), or
failing that, one whose centre is close and whose size is similar. A detection that does not qualify
(another person, a false positive elsewhere) counts as a miss rather than a jump. After
``reacquire_after`` consecutive misses the tracker forgets the old face and takes the largest one
again, so a face that moved quickly is picked up again.

A frame is *present* when the face was found at its key frame, or, for a frame between two key
frames, when it was found at both of them. Frames that are not present keep the nearest known box
(or zeros, when the face was never found) in ``boxes`` so that the array is always usable, but those
boxes must not be used for compositing: callers pass such frames through unchanged.

*Landmarks*: with a detector that has ``detect_with_landmarks`` (YuNet's five points), the points
of the main face ride along: interpolated, smoothed and gap-filled exactly like its box.

*Tracking gaps*: a detector misses the odd frame (a turned head, motion blur), and a missed frame
passed through un-synced freezes the mouth mid-speech. So a run of frames without a face of at most
``max_gap`` frames is filled before smoothing: between two found faces with boxes interpolated
linearly from the last box before the gap to the first after it; at the start or the end of the
clip with the nearest box held. Only a face gone for longer than that stays absent.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np

from actors.face.boxes import box_iou

from actors.errors import InvalidParameterError, NoFaceError

__all__ = ["FaceTrack", "track_faces", "boxes_from_override", "box_iou", "fill_gaps"]


@dataclass
class FaceTrack:
    """Per-frame face boxes of one clip.

    ``boxes``: float32[n, 4] (x1, y1, x2, y2) in frame pixels; ``present``: bool[n], whether the face
    is in frame i; ``detections``: how many times the detector was run; ``frame_size``: (width,
    height) of the frames, when known.
    """

    boxes: np.ndarray
    present: np.ndarray
    detections: int = 0
    frame_size: tuple[int, int] | None = field(default=None)
    gap_frames: int = 0  # frames made present by gap filling (interpolated or held boxes)
    # float32[n, 5, 2] five facial points per frame (eyes, nose tip, mouth corners), tracked like the
    # boxes, when the detector gives them (YuNet); None otherwise.
    landmarks: np.ndarray | None = None

    def __post_init__(self):
        self.boxes = np.asarray(self.boxes, np.float32).reshape(-1, 4)
        self.present = np.asarray(self.present, bool).reshape(-1)
        if self.landmarks is not None:
            self.landmarks = np.asarray(self.landmarks, np.float32).reshape(len(self.boxes), 5, 2)
        if len(self.boxes) != len(self.present):
            raise InvalidParameterError(
                f"FaceTrack boxes ({len(self.boxes)}) and present ({len(self.present)}) differ in length")

    def __len__(self) -> int:
        return len(self.boxes)

    @property
    def n_present(self) -> int:
        return int(self.present.sum())


def _area(b: np.ndarray) -> np.ndarray:
    b = np.asarray(b, np.float64).reshape(-1, 4)
    return np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)


class _MainFace:
    """Chooses the main face among each key frame's detections."""

    acquire_score_frac = 0.75

    def __init__(self, min_iou: float, max_shift: float, max_scale: float, reacquire_after: int):
        self.min_iou = min_iou
        self.max_shift = max_shift
        self.max_scale = max_scale
        self.reacquire_after = reacquire_after
        self.prev: np.ndarray | None = None
        self.misses = 0

    def pick(self, dets: np.ndarray) -> np.ndarray | None:
        """The main face's row among ``dets`` (x1, y1, x2, y2, score, then any extra columns such
        as landmarks), or None for a miss."""
        dets = np.asarray(dets, np.float32)
        dets = dets.reshape(len(dets), -1) if len(dets) else np.zeros((0, 5), np.float32)
        dets = dets[(dets[:, 2] > dets[:, 0]) & (dets[:, 3] > dets[:, 1])]
        row = None
        if len(dets):
            if self.prev is None or self.misses >= self.reacquire_after:
                # The largest of the confident detections (a big, weak false positive loses).
                conf = np.flatnonzero(dets[:, 4] >= self.acquire_score_frac * float(dets[:, 4].max()))
                row = dets[conf[int(np.argmax(_area(dets[conf, :4])))]]
            else:
                i = self._follow(dets[:, :4])
                row = None if i is None else dets[i]
        if row is None:
            self.misses += 1
            return None
        self.prev = np.asarray(row[:4], np.float32).copy()
        self.misses = 0
        return np.asarray(row, np.float32).copy()

    def _follow(self, cands: np.ndarray) -> int | None:
        prev = self.prev
        ious = box_iou(prev, cands)
        best = int(np.argmax(ious))
        scale_ok = self._scale_ok(cands)
        if ious[best] >= self.min_iou and scale_ok[best]:
            return best
        # No good overlap (fast motion): accept the closest centre within reach and of similar size.
        pc = np.array([(prev[0] + prev[2]) / 2, (prev[1] + prev[3]) / 2])
        psize = float(np.sqrt(_area(prev)[0]))
        cc = np.stack([(cands[:, 0] + cands[:, 2]) / 2, (cands[:, 1] + cands[:, 3]) / 2], axis=1)
        dist = np.linalg.norm(cc - pc, axis=1)
        ok = (dist <= self.max_shift * max(psize, 1.0)) & scale_ok
        if not ok.any():
            return None
        dist = np.where(ok, dist, np.inf)
        return int(np.argmin(dist))

    def _scale_ok(self, cands: np.ndarray) -> np.ndarray:
        ratio = np.sqrt(_area(cands) / max(float(_area(self.prev)[0]), 1e-6))
        return (ratio <= self.max_scale) & (ratio >= 1.0 / self.max_scale)


def _smooth(boxes: np.ndarray, present: np.ndarray, window: int) -> np.ndarray:
    """Centred moving average over ``window`` frames, within each contiguous run of present frames
    (the window shrinks at the ends of a run; an even window acts as window+1)."""
    half = max(0, int(window) // 2)
    out = boxes.copy()
    if half == 0 or not present.any():
        return out
    n = len(boxes)
    idx = np.flatnonzero(present)
    # Split present indices into contiguous runs.
    breaks = np.flatnonzero(np.diff(idx) > 1) + 1
    for run in np.split(idx, breaks):
        a, b = int(run[0]), int(run[-1]) + 1  # [a, b)
        seg = boxes[a:b].astype(np.float64)
        csum = np.vstack([np.zeros((1, seg.shape[1])), np.cumsum(seg, axis=0)])
        i = np.arange(b - a)
        lo = np.clip(i - half, 0, b - a)
        hi = np.clip(i + half + 1, 0, b - a)
        out[a:b] = ((csum[hi] - csum[lo]) / (hi - lo)[:, None]).astype(np.float32)
    assert len(out) == n
    return out


def fill_gaps(boxes: np.ndarray, present: np.ndarray, max_gap: int) -> int:
    """Fill runs of absent frames of at most ``max_gap`` frames, in place (see the module
    docstring); returns how many frames were filled. A clip with no face at all stays as it is."""
    n = len(present)
    max_gap = int(max_gap)
    if max_gap <= 0 or n == 0 or present.all() or not present.any():
        return 0
    absent = np.flatnonzero(~present)
    breaks = np.flatnonzero(np.diff(absent) > 1) + 1
    filled = 0
    for run in np.split(absent, breaks):
        a, b = int(run[0]), int(run[-1]) + 1  # absent frames [a, b)
        if b - a > max_gap:
            continue
        if a > 0 and b < n:  # between two found faces: interpolate
            t = (np.arange(a, b, dtype=np.float32) - (a - 1))[:, None] / np.float32(b - (a - 1))
            boxes[a:b] = (1 - t) * boxes[a - 1][None] + t * boxes[b][None]
        else:  # at an end of the clip: hold the nearest box
            boxes[a:b] = boxes[b] if a == 0 else boxes[a - 1]
        present[a:b] = True
        filled += b - a
    return filled


def track_faces(frames: Iterable[np.ndarray], detector, detect_every: int = 5, smooth_window: int = 5,
                path: str | None = None, *, max_gap: int = 0, require_face: bool = True, min_iou: float = 0.2,
                max_shift: float = 1.0, max_scale: float = 1.6, reacquire_after: int = 3) -> FaceTrack:
    """Detect and follow the main face through ``frames`` (BGR uint8 arrays, consumed lazily).

    ``detect_every``: run the detector on frames 0, k, 2k, ... and on the last frame.
    ``smooth_window``: centred moving-average length in frames (1 or 0: no smoothing).
    ``max_gap``: runs of at most this many frames without a face get interpolated or held boxes
    (0: none; the avatar cache passes ``AvatarParams.max_gap_s`` x fps).
    ``path``: the template's path, for error messages.
    ``require_face``: raise :class:`NoFaceError` when no frame has a face (or there are no frames);
    with ``False`` an all-absent (possibly empty) track is returned instead.
    ``min_iou`` / ``max_shift`` (centre distance in units of the face size) / ``max_scale`` (size
    ratio): when a detection counts as the same face as before. ``reacquire_after``: consecutive
    missed key frames after which the largest face is taken afresh.
    """
    if int(detect_every) < 1:
        raise InvalidParameterError(f"detect_every must be >= 1, got {detect_every}", path=path)
    if int(smooth_window) < 0:
        raise InvalidParameterError(f"smooth_window must be >= 0, got {smooth_window}", path=path)
    if int(max_gap) < 0:
        raise InvalidParameterError(f"max_gap must be >= 0, got {max_gap}", path=path)
    k = int(detect_every)
    chooser = _MainFace(min_iou, max_shift, max_scale, max(1, int(reacquire_after)))
    key_idx: list[int] = []
    key_box: list[np.ndarray | None] = []
    n = 0
    last: np.ndarray | None = None
    frame_size = None
    runs = 0
    # Five-point landmarks ride along with the boxes (same choice, interpolation, smoothing and gap
    # filling) when the detector gives them on every call.
    detect_marks = getattr(detector, "detect_with_landmarks", None)
    with_marks = detect_marks is not None

    def run_detector(img: np.ndarray, i: int) -> None:
        nonlocal runs, with_marks
        runs += 1
        key_idx.append(i)
        marks = None
        if with_marks:
            rows, marks = detect_marks(img)
            with_marks = marks is not None or len(rows) == 0  # no face: nothing to carry
            if marks is None:
                marks = np.zeros((0, 5, 2), np.float32)
        else:
            rows = detector.detect(img)
        rows = np.asarray(rows, np.float32).reshape(len(rows), -1) if len(rows) else np.zeros((0, 5), np.float32)
        if marks is not None and with_marks:
            rows = np.concatenate([rows[:, :5], np.asarray(marks, np.float32).reshape(len(rows), 10)], axis=1)
        row = chooser.pick(rows)
        key_box.append(None if row is None else np.concatenate([row[:4], row[5:]]))

    for i, img in enumerate(frames):
        if frame_size is None:
            frame_size = (int(img.shape[1]), int(img.shape[0]))
        if i % k == 0:
            run_detector(img, i)
        last = img
        n = i + 1
    if n and key_idx[-1] != n - 1:
        run_detector(last, n - 1)
    last = None
    width = 14 if with_marks else 4  # box, then the ten landmark coordinates
    key_box = [None if b is None else b[:width] for b in key_box]

    boxes = np.zeros((n, width), np.float32)
    present = np.zeros(n, bool)
    for j, (i, box) in enumerate(zip(key_idx, key_box)):
        if box is not None:
            boxes[i] = box
            present[i] = True
        if j + 1 < len(key_idx):
            i2, box2 = key_idx[j + 1], key_box[j + 1]
            if box is not None and box2 is not None and i2 > i + 1:
                t = (np.arange(i + 1, i2, dtype=np.float32) - i)[:, None] / (i2 - i)
                boxes[i + 1:i2] = (1 - t) * box[None] + t * box2[None]
                present[i + 1:i2] = True

    if not present.any():
        if require_face:
            what = "no frames to track" if n == 0 else f"no face found in any of {n} frames"
            raise NoFaceError(f"{what} (detector ran on {runs} frames)", path=path, stage="face")
        return FaceTrack(boxes[:, :4], present, runs, frame_size)

    filled = fill_gaps(boxes, present, max_gap)
    boxes = _smooth(boxes, present, smooth_window)
    _fill_absent(boxes, present)
    return FaceTrack(boxes[:, :4], present, runs, frame_size, gap_frames=filled,
                     landmarks=boxes[:, 4:] if with_marks else None)


def _fill_absent(boxes: np.ndarray, present: np.ndarray) -> None:
    """Give frames without a face the box of the nearest present frame (in place)."""
    if present.all() or not present.any():
        return
    idx = np.flatnonzero(present)
    missing = np.flatnonzero(~present)
    pos = np.searchsorted(idx, missing)
    left = idx[np.clip(pos - 1, 0, len(idx) - 1)]
    right = idx[np.clip(pos, 0, len(idx) - 1)]
    nearest = np.where(np.abs(missing - left) <= np.abs(right - missing), left, right)
    boxes[missing] = boxes[nearest]


def boxes_from_override(box: Sequence[float], n: int, frame_w: int | None = None,
                        frame_h: int | None = None) -> FaceTrack:
    """A track for a user-given fixed box ``(x1, y1, x2, y2)`` on all ``n`` frames (all present).

    The box is clipped to the frame when its size is given; an empty or malformed box raises
    :class:`InvalidParameterError`.
    """
    try:
        b = np.asarray([float(v) for v in box], np.float64)
    except (TypeError, ValueError):
        raise InvalidParameterError(f"face box must be four numbers (x1, y1, x2, y2), got {box!r}") from None
    if b.shape != (4,) or not np.all(np.isfinite(b)):
        raise InvalidParameterError(f"face box must be four finite numbers (x1, y1, x2, y2), got {box!r}")
    if frame_w is not None and frame_h is not None:
        b[[0, 2]] = np.clip(b[[0, 2]], 0, frame_w)
        b[[1, 3]] = np.clip(b[[1, 3]], 0, frame_h)
    if b[2] - b[0] < 2 or b[3] - b[1] < 2:
        raise InvalidParameterError(f"face box {tuple(box)} is empty or outside the frame"
                                    + (f" ({frame_w}x{frame_h})" if frame_w is not None else ""))
    if int(n) < 0:
        raise InvalidParameterError(f"frame count must be >= 0, got {n}")
    boxes = np.repeat(b.astype(np.float32)[None], int(n), axis=0)
    size = (int(frame_w), int(frame_h)) if frame_w is not None and frame_h is not None else None
    return FaceTrack(boxes, np.ones(int(n), bool), 0, size)
