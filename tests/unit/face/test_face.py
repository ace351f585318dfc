"""Face detection (Haar default, generic ONNX, loading errors) and main-face tracking."""

from __future__ import annotations

import pickle
import warnings

import av
import cv2
import numpy as np
import pytest

from actors.errors import InvalidParameterError, ModelLoadError, NoFaceError
from actors.face.detector import FaceDetector, HaarFaceDetector, OnnxFaceDetector, make_detector
from actors.face.tracking import FaceTrack, boxes_from_override, box_iou, track_faces
from tests.media import ASSETS

TEMPLATE = ASSETS / "demo_template.mp4"


@pytest.fixture(scope="module")
def template_frames() -> dict[int, np.ndarray]:
    """A few frames of the demo template, decoded with PyAV."""
    wanted = {0, 33, 66, 99}
    out = {}
    with av.open(str(TEMPLATE)) as c:
        for i, f in enumerate(c.decode(video=0)):
            if i in wanted:
                out[i] = f.to_ndarray(format="bgr24")
    assert set(out) == wanted
    return out


@pytest.fixture(scope="module")
def haar() -> HaarFaceDetector:
    return HaarFaceDetector()


def _assert_face_box(row, frame_w=480, frame_h=480, off=(0, 0), scale=1.0):
    """The astronaut's face in the 480x480 template sits at about (155, 85)-(315, 245)."""
    x1, y1, x2, y2, score = (float(v) for v in row)
    cx = ((x1 + x2) / 2 - off[0]) / scale
    cy = ((y1 + y2) / 2 - off[1]) / scale
    size = (x2 - x1) / scale
    assert 190 <= cx <= 280, row
    assert 120 <= cy <= 210, row
    assert 110 <= size <= 220, row
    assert 0 < score <= 1


# ---------------------------------------------------------------------------------------------
# Haar


def test_haar_is_a_face_detector(haar):
    assert isinstance(haar, FaceDetector)
    assert isinstance(make_detector(None), HaarFaceDetector)


def test_haar_finds_face_in_template_frames(haar, template_frames):
    for i, frame in template_frames.items():
        dets = haar.detect(frame)
        assert dets.dtype == np.float32 and dets.ndim == 2 and dets.shape[1] == 5
        assert len(dets) == 1, (i, dets)
        _assert_face_box(dets[0])


def test_haar_scales_boxes_back_from_a_large_frame(haar, template_frames):
    """A 1280x720 frame (downscaled internally) with the face placed and scaled up 1.25x."""
    face = cv2.resize(template_frames[0], (600, 600), interpolation=cv2.INTER_LINEAR)
    big = np.full((720, 1280, 3), 90, np.uint8)
    big[60:660, 400:1000] = face
    dets = haar.detect(big)
    assert len(dets) >= 1
    _assert_face_box(dets[0], off=(400, 60), scale=1.25)


def test_haar_finds_nothing_on_flat_grey(haar):
    dets = haar.detect(np.full((360, 640, 3), 128, np.uint8))
    assert dets.shape == (0, 5) and dets.dtype == np.float32


def test_haar_accepts_grayscale_and_rejects_garbage(haar, template_frames):
    gray = cv2.cvtColor(template_frames[0], cv2.COLOR_BGR2GRAY)
    assert len(haar.detect(gray)) == 1
    with pytest.raises(InvalidParameterError):
        haar.detect(np.zeros((10, 10, 3), np.float32))


def test_haar_pickles(haar, template_frames):
    clone = pickle.loads(pickle.dumps(haar))
    np.testing.assert_allclose(clone.detect(template_frames[33]), haar.detect(template_frames[33]))


def test_haar_tracks_the_template(haar):
    def frames():
        with av.open(str(TEMPLATE)) as c:
            for f in c.decode(video=0):
                yield f.to_ndarray(format="bgr24")

    track = track_faces(frames(), haar, detect_every=10, smooth_window=5, path=str(TEMPLATE))
    assert len(track) == 100 and track.present.all()
    assert track.detections == 11  # 0, 10, ..., 90 and the last frame 99
    for row in track.boxes[::9]:
        _assert_face_box([*row, 1.0])
    # The drift is slow: consecutive boxes move by a few pixels at most.
    assert np.abs(np.diff(track.boxes, axis=0)).max() < 8


# ---------------------------------------------------------------------------------------------
# ONNX


FIXED = np.array([
    [10, 20, 110, 140, 0.7],
    [200, 40, 260, 100, 0.95],
    [0, 0, 50, 50, 0.2],  # below the threshold
    [12, 22, 112, 142, 0.6],  # a duplicate of the first row: suppressed by NMS
    [150, 150, 330, 330, 0.8],  # partly outside the 320x320 input: clipped to the frame
], np.float32)


def _export_fixed_detector(path, batch_dim: bool) -> None:
    import torch

    class Fixed(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("rows", torch.from_numpy(FIXED[None] if batch_dim else FIXED))

        def forward(self, image):
            return self.rows + 0.0 * image.mean()  # depend on the input so it stays in the graph

    args = (torch.zeros(1, 3, 320, 320),)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:  # the TorchScript exporter is quick; the dynamo one is the fallback where it is gone
            torch.onnx.export(Fixed(), args, str(path), input_names=["image"], output_names=["boxes"],
                              dynamo=False)
        except Exception:
            torch.onnx.export(Fixed(), args, str(path), input_names=["image"], output_names=["boxes"],
                              dynamo=True)


@pytest.fixture(scope="module")
def fixed_models(tmp_path_factory):
    d = tmp_path_factory.mktemp("onnx")
    paths = {}
    for batch in (False, True):
        p = d / f"fixed_{'b' if batch else 'n'}.onnx"
        _export_fixed_detector(p, batch)
        paths[batch] = p
    return paths


@pytest.mark.parametrize("batch", [False, True])
def test_onnx_detector_maps_boxes_to_the_frame(fixed_models, batch):
    det = make_detector(str(fixed_models[batch]))
    assert isinstance(det, OnnxFaceDetector) and isinstance(det, FaceDetector)
    frame = np.zeros((480, 640, 3), np.uint8)  # 320x320 input -> x * 2, y * 1.5
    out = det.detect(frame)
    assert out.dtype == np.float32 and out.shape == (3, 5)
    expected = np.array([
        [400, 60, 520, 150, 0.95],
        [300, 225, 640, 480, 0.8],
        [20, 30, 220, 210, 0.7],
    ], np.float32)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-3)
    # A threshold and a pickled copy behave the same way.
    strict = OnnxFaceDetector(fixed_models[batch], score_threshold=0.9)
    np.testing.assert_allclose(pickle.loads(pickle.dumps(strict)).detect(frame), expected[:1], atol=1e-3)


def test_model_load_errors_name_the_file(tmp_path):
    missing = tmp_path / "nope.onnx"
    with pytest.raises(ModelLoadError, match="nope.onnx"):
        make_detector(str(missing))
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"this is not a protobuf \x00\x01\x02" * 10)
    with pytest.raises(ModelLoadError, match="garbage.onnx") as info:
        OnnxFaceDetector(garbage)
    assert info.value.code.value == "model_load_failed" and not info.value.retryable
    yunet = tmp_path / "face_detection_yunet_garbage.onnx"
    yunet.write_bytes(b"\x08\x07garbage")
    with pytest.raises(ModelLoadError, match="yunet_garbage.onnx"):
        OnnxFaceDetector(yunet)


def test_onnx_detector_rejects_a_model_with_the_wrong_output(tmp_path):
    import torch

    class Wrong(torch.nn.Module):
        def forward(self, image):
            return image.mean(dim=(2, 3))  # [1, 3]

    path = tmp_path / "wrong.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(Wrong(), (torch.zeros(1, 3, 64, 64),), str(path), dynamo=False)
        except Exception:
            torch.onnx.export(Wrong(), (torch.zeros(1, 3, 64, 64),), str(path), dynamo=True)
    with pytest.raises(ModelLoadError, match="wrong.onnx"):
        OnnxFaceDetector(path).detect(np.zeros((64, 64, 3), np.uint8))


# ---------------------------------------------------------------------------------------------
# Tracking with a scripted detector


def _frame(i: int) -> np.ndarray:
    """A tiny frame that carries its own index (the fake detector reads it back)."""
    f = np.zeros((4, 4, 3), np.uint8)
    f[0, 0, 0], f[0, 0, 1] = i % 256, i // 256
    return f


class ScriptedDetector:
    """Returns ``script(i)`` for frame i: a list of (x1, y1, x2, y2, score); records the calls."""

    def __init__(self, script):
        self.script = script
        self.calls: list[int] = []

    def detect(self, frame_bgr):
        i = int(frame_bgr[0, 0, 0]) + 256 * int(frame_bgr[0, 0, 1])
        self.calls.append(i)
        rows = self.script(i)
        return np.asarray(rows, np.float32).reshape(-1, 5)


def _frames(n):
    return (_frame(i) for i in range(n))  # a generator: the tracker must stream


def test_detects_every_kth_and_the_last_frame_and_interpolates():
    a = np.array([100, 100, 200, 200], np.float32)
    b = np.array([150, 110, 250, 210], np.float32)
    det = ScriptedDetector(lambda i: [[*(a + (b - a) * min(i, 5) / 5), 0.9]])
    track = track_faces(_frames(13), det, detect_every=5, smooth_window=1)
    assert det.calls == [0, 5, 10, 12]
    assert track.detections == 4
    assert isinstance(track, FaceTrack) and track.boxes.dtype == np.float32 and track.present.dtype == bool
    assert track.present.all()
    for i in range(6):
        np.testing.assert_allclose(track.boxes[i], a + (b - a) * i / 5, atol=1e-4)
    np.testing.assert_allclose(track.boxes[5:], np.repeat(b[None], 8, 0), atol=1e-4)


def test_single_frame_and_exact_multiple():
    box = [10, 10, 50, 50, 0.9]
    det = ScriptedDetector(lambda i: [box])
    t = track_faces(_frames(1), det, detect_every=5)
    assert det.calls == [0] and t.present.tolist() == [True]
    det = ScriptedDetector(lambda i: [box])
    track_faces(_frames(11), det, detect_every=5)
    assert det.calls == [0, 5, 10]


def test_smoothing_is_a_centred_moving_average():
    rng = np.random.default_rng(0)
    jitter = rng.normal(0, 3, size=(40, 4)).astype(np.float32)
    base = np.array([100, 100, 220, 220], np.float32)
    det = ScriptedDetector(lambda i: [[*(base + jitter[i]), 0.9]])
    raw = track_faces(_frames(40), det, detect_every=1, smooth_window=1)
    np.testing.assert_allclose(raw.boxes, base + jitter, atol=1e-4)
    sm = track_faces(_frames(40), ScriptedDetector(det.script), detect_every=1, smooth_window=5)
    np.testing.assert_allclose(sm.boxes[10], (base + jitter[8:13]).mean(axis=0), atol=1e-3)
    np.testing.assert_allclose(sm.boxes[0], (base + jitter[0:3]).mean(axis=0), atol=1e-3)  # shrinks at the ends
    assert np.std(sm.boxes - base) < 0.6 * np.std(raw.boxes - base)
    # A linear motion is left as it is in the interior.
    lin = ScriptedDetector(lambda i: [[100 + 2 * i, 100, 200 + 2 * i, 200, 0.9]])
    t = track_faces(_frames(30), lin, detect_every=3, smooth_window=7)
    np.testing.assert_allclose(t.boxes[3:27, 0], 100 + 2 * np.arange(3, 27), atol=1e-3)


def test_main_face_stays_the_same_with_two_faces():
    def script(i):
        a = [100 + i, 100, 220 + i, 220, 0.9]  # the main face: largest at the start, drifting right
        b = [400, 120, 490, 210, 0.99]  # a second, smaller, more confident face
        if i == 20:
            return [b]  # only the other face is seen: a miss, not a jump
        if i >= 30:  # the second face comes closer and is now the larger one
            b = [380, 90, 520, 230, 0.99]
        return [b, a]

    det = ScriptedDetector(script)
    track = track_faces(_frames(50), det, detect_every=5, smooth_window=1)
    ok = track.present
    assert not ok[16:25].any() and ok[:16].all() and ok[25:].all()
    np.testing.assert_allclose(track.boxes[ok][:, 0], 100 + np.flatnonzero(ok), atol=1e-3)
    assert np.all(track.boxes[:, 2] < 300)  # never jumped to the other face


def test_face_leaving_mid_clip_marks_frames_absent():
    def script(i):
        return [] if 20 <= i < 35 else [[50, 60, 150, 160, 0.9]]

    det = ScriptedDetector(script)
    track = track_faces(_frames(50), det, detect_every=5, smooth_window=5)
    expected = np.ones(50, bool)
    expected[16:35] = False  # between key frame 15 (found) and 35 (found), 20/25/30 missed
    assert track.present.tolist() == expected.tolist()
    # Absent frames still carry a usable box (the nearest known one).
    np.testing.assert_allclose(track.boxes[20], [50, 60, 150, 160], atol=1e-4)
    assert track.n_present == 50 - 19


def test_face_missing_at_the_end_and_start():
    det = ScriptedDetector(lambda i: [[10, 10, 60, 60, 0.9]] if 5 <= i < 20 else [])
    track = track_faces(_frames(23), det, detect_every=5, smooth_window=3)
    assert det.calls == [0, 5, 10, 15, 20, 22]
    assert np.flatnonzero(track.present).tolist() == list(range(5, 16))


def test_reacquires_after_the_face_moved_far():
    def script(i):
        return [[10, 10, 60, 60, 0.9]] if i < 10 else [[300, 300, 350, 350, 0.9]]

    track = track_faces(_frames(60), ScriptedDetector(script), detect_every=5, smooth_window=1)
    # Key frames 10, 15, 20 are rejected as a jump; from 25 on the new position is taken.
    assert not track.present[6:25].any() and track.present[25:].all()
    np.testing.assert_allclose(track.boxes[40], [300, 300, 350, 350])


def test_no_face_raises_or_returns_absent():
    with pytest.raises(NoFaceError, match="clip.mp4"):
        track_faces(_frames(12), ScriptedDetector(lambda i: []), path="clip.mp4")
    t = track_faces(_frames(12), ScriptedDetector(lambda i: []), require_face=False)
    assert len(t) == 12 and not t.present.any()
    with pytest.raises(NoFaceError):
        track_faces(iter(()), ScriptedDetector(lambda i: []))
    with pytest.raises(InvalidParameterError):
        track_faces(_frames(3), ScriptedDetector(lambda i: []), detect_every=0)


def test_boxes_from_override():
    t = boxes_from_override((10, 20, 110, 140), 7)
    assert t.boxes.shape == (7, 4) and t.present.all()
    np.testing.assert_allclose(t.boxes[3], [10, 20, 110, 140])
    t = boxes_from_override([-10, 20, 700, 140], 2, frame_w=640, frame_h=480)
    np.testing.assert_allclose(t.boxes[0], [0, 20, 640, 140])
    with pytest.raises(InvalidParameterError):
        boxes_from_override((50, 50, 40, 60), 3)
    with pytest.raises(InvalidParameterError):
        boxes_from_override((1, 2, 3), 3)
    with pytest.raises(InvalidParameterError):
        boxes_from_override((700, 10, 800, 100), 3, frame_w=640, frame_h=480)


def test_box_iou():
    np.testing.assert_allclose(box_iou([0, 0, 10, 10], [[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30]]),
                               [1.0, 1 / 3, 0.0])
