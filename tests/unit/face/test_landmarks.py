"""Five-point landmarks (YuNet) ride along the face track and anchor MuseTalk's crop on the nose."""

from __future__ import annotations

import numpy as np
import pytest

from actors.crop_geometry import MuseTalkGeometry, PaddedBoxGeometry
from actors.errors import InvalidParameterError
from actors.face.detector import OnnxFaceDetector
from actors.face.tracking import track_faces
from actors.generators import musetalk_crop
from tests.unit.face.test_face import ScriptedDetector, _frames

# right eye, left eye, nose tip, right / left mouth corner of a face box (100, 100, 200, 220)
POINTS = np.array([[130, 140], [170, 140], [150, 170], [135, 195], [165, 195]], np.float32)


class LandmarkDetector(ScriptedDetector):
    """``script(i)`` -> rows (x1, y1, x2, y2, score, 10 landmark coordinates)."""

    def detect_with_landmarks(self, frame):
        rows = np.asarray(self.detect(frame), np.float32)
        return rows, None if rows.size == 0 else rows[:, 5:].reshape(-1, 5, 2)

    def detect(self, frame):
        i = int(frame[0, 0, 0]) + 256 * int(frame[0, 0, 1])
        self.calls.append(i)
        return np.asarray(self.script(i), np.float32).reshape(-1, 15)


def _row(shift: float, score: float = 0.9):
    return [100 + shift, 100, 200 + shift, 220, score, *(POINTS + [shift, 0]).reshape(-1)]


def test_landmarks_follow_the_main_face_and_fill_gaps():
    det = LandmarkDetector(lambda i: [] if i == 10 else [_row(i), _row(300, 0.95)[:4] + [0.2] + _row(300)[5:]])
    track = track_faces(_frames(21), det, detect_every=5, smooth_window=1, max_gap=10)
    assert track.landmarks is not None and track.landmarks.shape == (21, 5, 2) and track.present.all()
    for i in range(21):  # interpolated between key frames and across the missed one (10), on the main face
        np.testing.assert_allclose(track.landmarks[i], POINTS + [i, 0], atol=1e-3)
        np.testing.assert_allclose(track.boxes[i], [100 + i, 100, 200 + i, 220], atol=1e-3)
    plain = track_faces(_frames(21), ScriptedDetector(lambda i: [_row(0)[:5]]), detect_every=5)
    assert plain.landmarks is None


def test_five_point_crop_anchors_on_the_nose():
    box = musetalk_crop.crop_box_from_five_points((100, 100, 200, 220), POINTS, frame_h=480)
    y_c = 140 + (170 - 140) * 2 / 3  # landmark 29: two thirds from the eye line to the nose tip
    assert box == (100, int(y_c - (220 - y_c)), 200, 230)
    g = MuseTalkGeometry()
    assert g.crop_box((100, 100, 200, 220), 640, 480, POINTS) == box
    assert g.crop_box((100, 100, 200, 220), 640, 480) == musetalk_crop.crop_box_from_face_box((100, 100, 200, 220), 480)
    bad = POINTS.copy()
    bad[2, 1] = 100  # nose above the eyes: falls back to the boxes-only crop
    assert g.crop_box((100, 100, 200, 220), 640, 480, bad) == g.crop_box((100, 100, 200, 220), 640, 480)
    assert PaddedBoxGeometry().crop_box((100, 100, 200, 220), 640, 480, POINTS) == (100, 100, 200, 230)
    with pytest.raises(InvalidParameterError):
        musetalk_crop.crop_box_from_five_points((100, 100, 200, 220), POINTS[:4], frame_h=480)


def test_yunet_rows_carry_the_landmarks():
    class FakeYuNet:  # cv2.FaceDetectorYN's output layout: x, y, w, h, 5 x (x, y), score
        def setInputSize(self, size):
            self.size = size

        def detect(self, img):
            return 1, np.array([[50, 40, 100, 120, *(POINTS / 2).reshape(-1), 0.8]], np.float32)

    det = object.__new__(OnnxFaceDetector)  # the parsing only; no model file is needed for it
    det.yunet_max_side = 320
    frame = np.zeros((480, 640, 3), np.uint8)  # scanned at half size
    rows = det._detect_yunet(FakeYuNet(), frame, with_landmarks=True)
    assert rows.shape == (1, 15)
    np.testing.assert_allclose(rows[0, :5], [100, 80, 300, 320, 0.8])
    np.testing.assert_allclose(rows[0, 5:].reshape(5, 2), POINTS)
    assert det._detect_yunet(FakeYuNet(), frame).shape == (1, 5)
