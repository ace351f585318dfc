"""Wav2Lip as a :class:`~actors.generators.base.Generator` (96x96 crops, torch or onnxruntime)."""

from __future__ import annotations

import os
from fractions import Fraction

import numpy as np

from actors.crop_geometry import PaddedBoxGeometry
from actors.errors import InvalidParameterError, ModelLoadError
from actors.generators.mel import mel_features
from actors.models.wav2lip_runtime import load_wav2lip
from actors.models.wav2lip_spec import format_window, window_contains

CROP_SIZE = 96
# Frames per forward pass. On CPU (onnxruntime, 2 cores) throughput is flat from 16 to 64 within the
# noise and a smaller batch starts the writer sooner; see bench/bench_generator.py for the sweep.
DEFAULT_BATCH = 32


def build_face_input(faces: np.ndarray) -> np.ndarray:
    """``uint8[B,96,96,3]`` BGR crops -> the network's ``float32[B,6,96,96]`` face input.

    Channels 0-2: the crop with rows ``48:`` (the lower half, where the mouth goes) zeroed; channels
    3-5: the unmasked crop as the identity reference. BGR order kept, values /255, NCHW.
    """
    x = np.asarray(faces, dtype=np.float32).transpose(0, 3, 1, 2) / np.float32(255.0)  # [B,3,H,W]
    masked = x.copy()
    masked[:, :, x.shape[2] // 2 :, :] = 0.0
    return np.ascontiguousarray(np.concatenate([masked, x], axis=1))


def build_mel_input(mels: np.ndarray) -> np.ndarray:
    """``float32[B,80,16]`` windows -> ``float32[B,1,80,16]`` (NaN/inf guarded)."""
    m = np.asarray(mels, dtype=np.float32)
    if m.ndim == 3:
        m = m[:, None]
    return np.ascontiguousarray(np.nan_to_num(m, nan=-4.0, posinf=4.0, neginf=-4.0))


class Wav2LipGenerator:
    """Wav2Lip generator over a user-supplied checkpoint (``.pth``/``.pt`` or ``.onnx``).

    Runs in chunks of ``batch_size`` frames. Raises ``ModelLoadError`` from the constructor when the
    checkpoint cannot be loaded and ``InvalidParameterError`` for wrongly shaped inputs.

    By default only the mouth window that the paste reads is decoded (``mouth_window``; a torch
    checkpoint is wrapped at load, an ONNX file carries its window from ``lipserve export-onnx``):
    the returned crops hold the generated pixels there and the input crop elsewhere, and the pasted
    frames are the same as with the whole crop decoded (``actors/models/wav2lip_window.py``).
    """

    name = "wav2lip"
    crop_size = CROP_SIZE
    crop_geometry = PaddedBoxGeometry(CROP_SIZE)

    def __init__(self, checkpoint: str | os.PathLike, device: str = "cpu", batch_size: int = DEFAULT_BATCH,
                 threads: int | None = None, mouth_window: bool = True, engine: str = "auto",
                 precision: str = "fp32"):
        if int(batch_size) < 1:
            raise InvalidParameterError(f"wav2lip batch_size must be >= 1, got {batch_size}")
        self.batch_size = int(batch_size)
        self.checkpoint = str(checkpoint)
        needed = self.crop_geometry.source_window()
        self.runner = load_wav2lip(checkpoint, device=device, threads=threads,
                                   window=needed if mouth_window else None, engine=engine, precision=precision)
        if not window_contains(self.runner.window, needed):
            raise ModelLoadError(
                f"{os.path.basename(self.checkpoint)} decodes only crop window {format_window(self.runner.window)} "
                f"but the paste reads {format_window(needed)}: export it again (lipserve export-onnx)",
                path=self.checkpoint)
        self.window = self.runner.window  # None: the whole crop
        self.backend = self.runner.backend  # "torch" | "onnxruntime" | "openvino"
        self.device = self.runner.device
        self.precision = getattr(self.runner, "precision", "fp32")

    def prepare_audio(self, samples_16k: np.ndarray, fps: Fraction, n_frames: int) -> np.ndarray:
        """Wav2Lip's mel windows, ``float32[n_frames,80,16]``."""
        return mel_features(samples_16k, fps, n_frames)

    def generate(self, faces: np.ndarray, mels: np.ndarray) -> np.ndarray:
        faces = np.asarray(faces)
        mels = np.asarray(mels)
        s = self.crop_size
        if faces.ndim != 4 or faces.shape[1:] != (s, s, 3):
            raise InvalidParameterError(f"wav2lip expects faces uint8[B,{s},{s},3], got {faces.shape}")
        if mels.shape[-2:] != (80, 16) or mels.ndim not in (3, 4):
            raise InvalidParameterError(f"wav2lip expects mels float32[B,80,16], got {mels.shape}")
        if len(faces) != len(mels):
            raise InvalidParameterError(f"wav2lip got {len(faces)} faces but {len(mels)} mel windows")
        if self.window is None:
            out = np.empty((len(faces), s, s, 3), np.uint8)
            r0, r1, c0, c1 = 0, s, 0, s
        else:  # outside the window the paste reads nothing: keep the input crop there
            out = np.array(faces, dtype=np.uint8, copy=True)
            r0, r1, c0, c1 = self.window
        for lo in range(0, len(faces), self.batch_size):
            hi = lo + self.batch_size
            pred = self.runner(build_mel_input(mels[lo:hi]), build_face_input(faces[lo:hi]))  # [b,3,h,w]
            pred = np.clip(pred.transpose(0, 2, 3, 1) * 255.0 + 0.5, 0, 255)
            out[lo:hi, r0:r1, c0:c1] = pred.astype(np.uint8)
        return out

    def warm_up(self) -> None:
        """One forward pass of a full batch of blank inputs: the runtime's first call allocates and
        picks its kernels (~0.16 s with OpenVINO on CPU), so a render's first segment does not."""
        s = self.crop_size
        self.generate(np.zeros((self.batch_size, s, s, 3), np.uint8), np.zeros((self.batch_size, 80, 16), np.float32))

    def __repr__(self) -> str:
        return f"Wav2LipGenerator({self.checkpoint!r}, backend={self.backend!r}, device={self.device!r})"
