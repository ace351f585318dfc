"""Face detectors: one small protocol, an embedded default and a pluggable ONNX model.

Every detector takes a BGR ``uint8`` frame (``H x W x 3``; a 2-D grayscale frame is accepted too)
and returns ``float32[K, 5]`` rows ``(x1, y1, x2, y2, score)`` in that frame's pixel coordinates,
sorted by score, highest first. ``K`` may be 0 (shape ``(0, 5)``). A detector with facial points
also has ``detect_with_landmarks(frame) -> (rows, float32[K, 5, 2] | None)`` (YuNet: eyes, nose
tip, mouth corners); the tracker then follows the points with the boxes.

* :class:`HaarFaceDetector` - OpenCV's bundled ``haarcascade_frontalface_default.xml`` (ships inside
  opencv-python, nothing is downloaded). Good enough for frontal talking-head templates.
* :class:`OnnxFaceDetector` - any ONNX model that follows the contract below, run by onnxruntime;
  or a YuNet model (file name containing ``yunet``), run by ``cv2.FaceDetectorYN``.

Generic ONNX I/O contract (what a model file must do to plug in):

* one input, ``float32 [1, 3, H, W]``: the frame in **BGR** channel order, values ``0..255`` (no
  normalisation), **plainly resized** to ``W x H`` (no letterbox: the aspect ratio is not kept, x and
  y are scaled independently). ``H, W`` are taken from the model's input shape when it is static,
  otherwise from ``input_size=(W, H)`` (default 320x320).
* first output ``[N, 5]`` or ``[1, N, 5]`` (float): ``x1, y1, x2, y2, score`` in the pixel
  coordinates of the resized input. ``N`` may be 0 and may vary per call.
* rows below ``score_threshold`` are dropped, the rest are non-maximum suppressed (IoU
  ``nms_iou``; pass ``None`` to keep every row), scaled back to the frame and clipped to it.

Detector objects can be pickled (for Ray): the OpenCV / onnxruntime handles are rebuilt lazily in
the receiving process.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol, runtime_checkable

import cv2
import numpy as np

from actors.errors import InvalidParameterError, ModelLoadError
from actors.face.boxes import box_iou

__all__ = [
    "FaceDetector",
    "HaarFaceDetector",
    "OnnxFaceDetector",
    "make_detector",
    "HAAR_CASCADE",
]

HAAR_CASCADE = "haarcascade_frontalface_default.xml"


@runtime_checkable
class FaceDetector(Protocol):
    """Anything with ``detect(frame_bgr) -> float32[K, 5]`` (x1, y1, x2, y2, score), best first."""

    def detect(self, frame_bgr: np.ndarray) -> np.ndarray: ...


def _empty() -> np.ndarray:
    return np.zeros((0, 5), np.float32)


def _check_frame(frame: np.ndarray) -> np.ndarray:
    if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8 or not (
        frame.ndim == 2 or (frame.ndim == 3 and frame.shape[2] in (1, 3, 4))
    ) or frame.shape[0] < 1 or frame.shape[1] < 1:
        desc = f"{frame.dtype} {frame.shape}" if isinstance(frame, np.ndarray) else type(frame).__name__
        raise InvalidParameterError(f"face detector expects a uint8 HxWx3 BGR frame, got {desc}", stage="face")
    return frame


def _to_bgr(frame: np.ndarray) -> np.ndarray:
    if frame.ndim == 2:
        return cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
    if frame.shape[2] == 1:
        return cv2.cvtColor(frame[..., 0], cv2.COLOR_GRAY2BGR)
    if frame.shape[2] == 4:
        return cv2.cvtColor(frame, cv2.COLOR_BGRA2BGR)
    return frame


def _to_gray(frame: np.ndarray) -> np.ndarray:
    if frame.ndim == 2:
        return frame
    if frame.shape[2] == 1:
        return frame[..., 0]
    if frame.shape[2] == 4:
        return cv2.cvtColor(frame, cv2.COLOR_BGRA2GRAY)
    return cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)


def _finish(rows: np.ndarray, frame_w: int, frame_h: int, cols: int = 5) -> np.ndarray:
    """Clip to the frame, drop empty boxes, sort by score (stable) and return float32[K, cols]
    (columns past the fifth, e.g. landmarks, are carried along unchanged)."""
    rows = np.asarray(rows, np.float32).reshape(-1, cols)
    if len(rows) == 0:
        return np.zeros((0, cols), np.float32)
    rows = rows[np.all(np.isfinite(rows), axis=1)]
    rows[:, [0, 2]] = np.clip(rows[:, [0, 2]], 0, frame_w)
    rows[:, [1, 3]] = np.clip(rows[:, [1, 3]], 0, frame_h)
    rows = rows[(rows[:, 2] - rows[:, 0] >= 1) & (rows[:, 3] - rows[:, 1] >= 1)]
    order = np.argsort(-rows[:, 4], kind="stable")
    return np.ascontiguousarray(rows[order], np.float32)


def _nms(rows: np.ndarray, iou: float | None) -> np.ndarray:
    if iou is None or len(rows) < 2:
        return rows
    # Greedy NMS, highest score first.
    b = rows[:, :4].astype(np.float64)
    order = np.argsort(-rows[:, 4], kind="stable")
    keep: list[int] = []
    while len(order):
        i, rest = int(order[0]), order[1:]
        keep.append(i)
        order = rest[box_iou(b[i], b[rest]) <= iou]
    return rows[np.sort(np.asarray(keep, np.int64))]


# ----------------------------------------------------------------------------------------------
# Haar cascade (default, no model file)


class HaarFaceDetector:
    """OpenCV's bundled frontal-face Haar cascade.

    The frame is converted to grayscale, downscaled so that its longest side is at most
    ``max_side`` pixels, histogram-equalised and scanned; boxes are scaled back to the frame.
    Faces narrower than ``min_size_frac`` of the frame's shorter side are ignored.

    ``score`` is derived from the neighbour count ``n`` of each grouped detection (how many
    overlapping windows voted for it): ``score = n / (n + min_neighbors)``, so it lies in
    ``[0.5, 1)`` for every reported face and grows with the evidence.
    """

    def __init__(self, min_size_frac: float = 0.1, max_side: int = 480, scale_factor: float = 1.1,
                 min_neighbors: int = 5, cascade_path: str | None = None):
        if not (0.0 <= min_size_frac < 1.0):
            raise InvalidParameterError(f"min_size_frac must be in [0, 1), got {min_size_frac}")
        if max_side < 64:
            raise InvalidParameterError(f"max_side must be >= 64, got {max_side}")
        if scale_factor <= 1.0:
            raise InvalidParameterError(f"scale_factor must be > 1, got {scale_factor}")
        self.min_size_frac = float(min_size_frac)
        self.max_side = int(max_side)
        self.scale_factor = float(scale_factor)
        self.min_neighbors = int(min_neighbors)
        self.cascade_path = cascade_path or os.path.join(cv2.data.haarcascades, HAAR_CASCADE)
        self._cascade = None
        self._load()

    def _load(self) -> cv2.CascadeClassifier:
        if self._cascade is None:
            if not os.path.isfile(self.cascade_path):
                raise ModelLoadError("Haar cascade file not found", path=self.cascade_path, stage="face")
            cascade = cv2.CascadeClassifier(self.cascade_path)
            if cascade.empty():
                raise ModelLoadError("not a loadable OpenCV cascade", path=self.cascade_path, stage="face")
            self._cascade = cascade
        return self._cascade

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_cascade"] = None
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)

    def detect(self, frame_bgr: np.ndarray) -> np.ndarray:
        frame = _check_frame(frame_bgr)
        h, w = frame.shape[:2]
        gray = _to_gray(frame)
        scale = min(1.0, self.max_side / max(h, w))
        if scale < 1.0:
            gray = cv2.resize(gray, (max(1, round(w * scale)), max(1, round(h * scale))),
                              interpolation=cv2.INTER_AREA)
        gray = cv2.equalizeHist(gray)
        gh, gw = gray.shape[:2]
        min_side = max(24, int(self.min_size_frac * min(gh, gw)))
        if min_side > min(gh, gw):
            return _empty()
        boxes, neighbours = self._load().detectMultiScale2(
            gray, scaleFactor=self.scale_factor, minNeighbors=self.min_neighbors,
            minSize=(min_side, min_side))
        if len(boxes) == 0:
            return _empty()
        boxes = np.asarray(boxes, np.float32).reshape(-1, 4) / scale
        n = np.asarray(neighbours, np.float32).reshape(-1)
        rows = np.empty((len(boxes), 5), np.float32)
        rows[:, 0] = boxes[:, 0]
        rows[:, 1] = boxes[:, 1]
        rows[:, 2] = boxes[:, 0] + boxes[:, 2]
        rows[:, 3] = boxes[:, 1] + boxes[:, 3]
        rows[:, 4] = n / (n + max(1, self.min_neighbors))
        return _finish(rows, w, h)

    def __repr__(self) -> str:
        return f"HaarFaceDetector(min_size_frac={self.min_size_frac}, max_side={self.max_side})"


# ----------------------------------------------------------------------------------------------
# ONNX models


def _is_yunet(path: str) -> bool:
    return "yunet" in Path(path).name.lower()


class OnnxFaceDetector:
    """A face detector loaded from an ONNX file (see the module docstring for the I/O contract).

    ``device="cuda"`` uses onnxruntime's CUDA execution provider when it is available (CPU
    otherwise). A file whose name contains ``yunet`` is run with ``cv2.FaceDetectorYN`` instead
    (OpenCV's YuNet wrapper, which decodes its multi-head output itself); frames are then scanned
    at their own size, downscaled to at most ``yunet_max_side`` on the longest side.

    Raises :class:`ModelLoadError` naming the file when it is missing or not a usable model.
    """

    def __init__(self, model_path: str | os.PathLike, input_size: tuple[int, int] = (320, 320),
                 score_threshold: float = 0.5, nms_iou: float | None = 0.45, device: str = "cpu",
                 yunet_max_side: int = 640):
        self.model_path = str(model_path)
        if len(tuple(input_size)) != 2 or min(input_size) < 8:
            raise InvalidParameterError(f"input_size must be (width, height) >= 8, got {input_size}")
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.score_threshold = float(score_threshold)
        self.nms_iou = None if nms_iou is None else float(nms_iou)
        self.device = device
        self.yunet_max_side = int(yunet_max_side)
        self.backend = "yunet" if _is_yunet(self.model_path) else "onnxruntime"
        self._session = None
        self._input_name = ""
        self._net_size = self.input_size  # (W, H) fed to the network
        self._load()

    # -- loading -----------------------------------------------------------------------------

    def _load(self):
        if self._session is not None:
            return self._session
        if not os.path.isfile(self.model_path):
            raise ModelLoadError("face detector model file not found", path=self.model_path, stage="face")
        if self.backend == "yunet":
            self._session = self._load_yunet()
        else:
            self._session = self._load_ort()
        return self._session

    def _load_yunet(self):
        if not hasattr(cv2, "FaceDetectorYN"):
            raise ModelLoadError("this OpenCV build has no FaceDetectorYN for the YuNet model",
                                 path=self.model_path, stage="face")
        try:
            det = cv2.FaceDetectorYN.create(self.model_path, "", self.input_size, self.score_threshold,
                                            self.nms_iou if self.nms_iou is not None else 0.3, 5000)
        except cv2.error as exc:
            raise ModelLoadError(f"not a loadable YuNet model: {exc}".strip(), path=self.model_path,
                                 stage="face") from None
        if det is None:
            raise ModelLoadError("not a loadable YuNet model", path=self.model_path, stage="face")
        return det

    def _providers(self) -> list[str]:
        import onnxruntime as ort

        available = ort.get_available_providers()
        if str(self.device).startswith("cuda") and "CUDAExecutionProvider" in available:
            return ["CUDAExecutionProvider", "CPUExecutionProvider"]
        return ["CPUExecutionProvider"]

    def _load_ort(self):
        try:
            import onnxruntime as ort
        except ImportError as exc:  # pragma: no cover - a hard dependency
            raise ModelLoadError(f"onnxruntime is not installed ({exc})", path=self.model_path,
                                 stage="face") from None
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        try:
            sess = ort.InferenceSession(self.model_path, sess_options=opts, providers=self._providers())
        except Exception as exc:  # onnxruntime raises its own (Fail / InvalidProtobuf / ...) types
            raise ModelLoadError(f"not a loadable ONNX model: {type(exc).__name__}: {exc}".strip(),
                                 path=self.model_path, stage="face") from None
        inputs, outputs = sess.get_inputs(), sess.get_outputs()
        if len(inputs) != 1 or len(inputs[0].shape) != 4:
            shapes = [tuple(i.shape) for i in inputs]
            raise ModelLoadError(f"face detector must have one [1,3,H,W] input, has {shapes}",
                                 path=self.model_path, stage="face")
        shape = inputs[0].shape
        if isinstance(shape[1], int) and shape[1] != 3:
            raise ModelLoadError(f"face detector input must have 3 channels, has shape {shape}",
                                 path=self.model_path, stage="face")
        if inputs[0].type not in ("tensor(float)",):
            raise ModelLoadError(f"face detector input must be float32, is {inputs[0].type}",
                                 path=self.model_path, stage="face")
        if not outputs:
            raise ModelLoadError("face detector has no outputs", path=self.model_path, stage="face")
        out_shape = outputs[0].shape
        if out_shape and isinstance(out_shape[-1], int) and out_shape[-1] != 5:
            raise ModelLoadError(f"face detector output must be [N,5] or [1,N,5], is {out_shape}",
                                 path=self.model_path, stage="face")
        net_w = shape[3] if isinstance(shape[3], int) and shape[3] > 0 else self.input_size[0]
        net_h = shape[2] if isinstance(shape[2], int) and shape[2] > 0 else self.input_size[1]
        self._net_size = (int(net_w), int(net_h))
        self._input_name = inputs[0].name
        self._output_name = outputs[0].name
        return sess

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_session"] = None
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)

    # -- inference ---------------------------------------------------------------------------

    def detect_with_landmarks(self, frame_bgr: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """``(rows float32[K,5], landmarks float32[K,5,2] | None)``: YuNet's five points per face
        (right eye, left eye, nose tip, right and left mouth corner, in frame pixels); None for a
        model without landmarks."""
        if self.backend != "yunet":
            return self.detect(frame_bgr), None
        rows = self._detect_yunet(self._load(), _to_bgr(_check_frame(frame_bgr)), with_landmarks=True)
        return np.ascontiguousarray(rows[:, :5]), np.ascontiguousarray(rows[:, 5:].reshape(-1, 5, 2))

    def detect(self, frame_bgr: np.ndarray) -> np.ndarray:
        frame = _to_bgr(_check_frame(frame_bgr))
        sess = self._load()
        if self.backend == "yunet":
            return self._detect_yunet(sess, frame)
        h, w = frame.shape[:2]
        net_w, net_h = self._net_size
        resized = cv2.resize(frame, (net_w, net_h), interpolation=cv2.INTER_AREA if net_w < w else cv2.INTER_LINEAR)
        blob = np.ascontiguousarray(resized.transpose(2, 0, 1)[None], np.float32)
        try:
            out = sess.run([self._output_name], {self._input_name: blob})[0]
        except Exception as exc:
            raise ModelLoadError(f"face detector failed to run: {type(exc).__name__}: {exc}",
                                 path=self.model_path, stage="face") from None
        out = np.asarray(out)
        if out.ndim == 3 and out.shape[0] == 1:
            out = out[0]
        if out.ndim != 2 or out.shape[1] != 5:
            raise ModelLoadError(f"face detector returned shape {tuple(np.shape(out))}, expected [N,5] or [1,N,5]",
                                 path=self.model_path, stage="face")
        rows = out.astype(np.float32, copy=True)
        rows = rows[rows[:, 4] >= self.score_threshold]
        rows = _nms(rows, self.nms_iou)
        if len(rows):
            rows[:, [0, 2]] *= w / net_w
            rows[:, [1, 3]] *= h / net_h
        return _finish(rows, w, h)

    def _detect_yunet(self, det, frame: np.ndarray, with_landmarks: bool = False) -> np.ndarray:
        """YuNet's faces as rows ``(x1, y1, x2, y2, score)``, plus its ten landmark coordinates
        when ``with_landmarks`` (cv2's row: x, y, w, h, 5 x (x, y), score)."""
        h, w = frame.shape[:2]
        scale = min(1.0, self.yunet_max_side / max(h, w))
        img = frame
        if scale < 1.0:
            img = cv2.resize(frame, (max(1, round(w * scale)), max(1, round(h * scale))),
                             interpolation=cv2.INTER_AREA)
        det.setInputSize((img.shape[1], img.shape[0]))
        try:
            _, faces = det.detect(img)
        except cv2.error as exc:
            raise ModelLoadError(f"YuNet model failed to run: {exc}".strip(), path=self.model_path,
                                 stage="face") from None
        cols = 15 if with_landmarks else 5
        if faces is None or len(faces) == 0:
            return np.zeros((0, cols), np.float32)
        faces = np.asarray(faces, np.float32).reshape(len(faces), -1)
        rows = np.empty((len(faces), cols), np.float32)
        rows[:, 0] = faces[:, 0]
        rows[:, 1] = faces[:, 1]
        rows[:, 2] = faces[:, 0] + faces[:, 2]
        rows[:, 3] = faces[:, 1] + faces[:, 3]
        rows[:, :4] /= scale
        rows[:, 4] = faces[:, -1]
        if with_landmarks:
            rows[:, 5:] = faces[:, 4:14] / scale
        return _finish(rows, w, h, cols)

    def __repr__(self) -> str:
        return f"OnnxFaceDetector({self.model_path!r}, backend={self.backend!r})"


def make_detector(model_path: str | os.PathLike | None = None, device: str = "cpu", **kwargs) -> FaceDetector:
    """The configured face detector: ``None`` (or ``""`` / ``"haar"``) -> :class:`HaarFaceDetector`,
    anything else is a model path -> :class:`OnnxFaceDetector`. Extra keyword arguments go to the
    chosen class."""
    if model_path is None or str(model_path).strip() in ("", "haar"):
        return HaarFaceDetector(**kwargs)
    return OnnxFaceDetector(model_path, device=device, **kwargs)
