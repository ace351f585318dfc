"""Tracking gaps: short runs without a detected face get interpolated / held boxes; a face that is
really gone (longer than the span) stays absent. Scripted detector, and the real avatar cache."""

from __future__ import annotations

import av
import numpy as np
import pytest

from actors.avatar import AvatarCache, AvatarParams
from actors.errors import InvalidParameterError
from actors.face.tracking import fill_gaps, track_faces
from tests.media import ASSETS, write_video
from tests.unit.face.test_face import ScriptedDetector, _frames

A = np.array([100, 100, 200, 200], np.float32)
B = np.array([140, 120, 240, 220], np.float32)


def test_fill_gaps_interpolates_between_and_holds_at_the_ends():
    n = 20
    boxes = np.zeros((n, 4), np.float32)
    present = np.zeros(n, bool)
    present[2:8] = present[12:17] = True
    boxes[2:8] = A
    boxes[12:17] = B
    filled = fill_gaps(boxes, present, max_gap=4)
    assert filled == 2 + 4 + 3 and present.all()
    np.testing.assert_array_equal(boxes[:2], np.repeat(A[None], 2, 0))  # held at the start
    np.testing.assert_array_equal(boxes[17:], np.repeat(B[None], 3, 0))  # held at the end
    for i in range(8, 12):  # linear between the last box before (7) and the first after (12)
        np.testing.assert_allclose(boxes[i], A + (B - A) * (i - 7) / 5, atol=1e-4)


def test_fill_gaps_leaves_long_gaps_and_empty_tracks():
    boxes = np.zeros((30, 4), np.float32)
    present = np.zeros(30, bool)
    present[:5] = present[25:] = True
    boxes[present] = A
    assert fill_gaps(boxes, present, max_gap=19) == 0  # a 20-frame gap is longer than the span
    assert not present[5:25].any() and (boxes[5:25] == 0).all()
    assert fill_gaps(boxes, present, max_gap=20) == 20 and present.all()
    nothing = np.zeros(10, bool)
    assert fill_gaps(np.zeros((10, 4), np.float32), nothing, 100) == 0 and not nothing.any()
    assert fill_gaps(np.zeros((10, 4), np.float32), present[:10].copy(), 0) == 0


def test_tracker_fills_missed_key_frames_within_the_span():
    # The detector misses key frames 15 and 20 (e.g. a turned head): frames 11..24 have no
    # detection on both sides, a 14-frame gap.
    det = ScriptedDetector(lambda i: [] if i in (15, 20) else [[*(A + (B - A) * i / 49), 0.9]])
    raw = track_faces(_frames(50), ScriptedDetector(det.script), detect_every=5, smooth_window=1)
    assert not raw.present[11:25].any() and raw.gap_frames == 0
    track = track_faces(_frames(50), det, detect_every=5, smooth_window=1, max_gap=14)
    assert track.present.all() and track.gap_frames == 14
    # the filled boxes continue the motion between the detections at 10 and 25
    np.testing.assert_allclose(track.boxes, A + (B - A) * np.arange(50)[:, None] / 49, atol=1e-3)
    short = track_faces(_frames(50), ScriptedDetector(det.script), detect_every=5, smooth_window=1, max_gap=13)
    assert not short.present[11:25].any()  # one frame longer than the span: passes through


def test_tracker_holds_a_face_found_late_or_lost_early():
    det = ScriptedDetector(lambda i: [[*A, 0.9]] if 5 <= i <= 40 else [])
    track = track_faces(_frames(46), det, detect_every=5, smooth_window=1, max_gap=5)
    assert track.present.all()
    np.testing.assert_array_equal(track.boxes[0], A)
    np.testing.assert_array_equal(track.boxes[45], A)
    with pytest.raises(InvalidParameterError):
        track_faces(_frames(5), det, max_gap=-1)


def _half_face_template(tmp_path, blank: int):
    with av.open(str(ASSETS / "demo_template.mp4")) as c:
        faces = [f.to_ndarray(format="bgr24") for _, f in zip(range(12), c.decode(video=0))]
    h, w = faces[0].shape[:2]
    return write_video(tmp_path / f"half_{blank}.mp4", faces + [np.full((h, w, 3), 90, np.uint8)] * blank, 25)


def test_avatar_span_is_in_seconds_of_the_template(tmp_path):
    """The demo face in 12 frames, then an empty scene: 0.48 s of it is held at 1 s, not at 0.2 s;
    1.2 s of it is a face really gone."""
    cache = AvatarCache(tmp_path / "cache")
    short = _half_face_template(tmp_path, 12)
    held = cache.get_or_build(short, AvatarParams(max_gap_s=1.0))
    assert held.present().all() and held.faces_found == 24
    boxes = held.boxes()
    # The last tracked box is held: constant over the gap, where the face was last seen.
    assert (boxes[12:] == boxes[12]).all()
    assert np.abs(boxes[12].astype(float) - boxes[11].astype(float)).max() <= 0.05 * (boxes[11][2] - boxes[11][0])
    strict = cache.get_or_build(short, AvatarParams(max_gap_s=0.2))
    assert strict.key != held.key and 0 < strict.faces_found <= 12
    gone = cache.get_or_build(_half_face_template(tmp_path, 30), AvatarParams())
    assert gone.faces_found <= 12 and not gone.present()[16:].any()
