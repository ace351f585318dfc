"""Wav2Lip's input/output contract and model-file checks, free of torch.

The ONNX path (onnxruntime only) loads through these without importing torch: importing torch costs
about 0.8 s of a ``lipserve render`` process and a few hundred MB of a worker's memory.
"""

from __future__ import annotations

import os
from pathlib import Path

from actors.errors import ModelLoadError

MEL_SHAPE = (1, 80, 16)
FACE_SHAPE = (6, 96, 96)
OUT_SHAPE = (3, 96, 96)
CROP = 96
TORCH_SUFFIXES = (".pth", ".pt")
ONNX_SUFFIXES = (".onnx",)
ENGINES = ("auto", "onnxruntime", "openvino")  # what runs a .onnx (wav2lip_runtime.load_wav2lip)
# ONNX metadata key of a mouth-window export (actors/models/wav2lip_window.py): "r0,r1,c0,c1".
WINDOW_METADATA_KEY = "lipserve.output_window"


def check_model_path(path: str | os.PathLike, suffixes: tuple[str, ...] | None = None) -> Path:
    p = Path(path)
    allowed = suffixes or (TORCH_SUFFIXES + ONNX_SUFFIXES)
    if p.suffix.lower() not in allowed:
        raise ModelLoadError(
            f"unknown model file type {p.suffix or '(no suffix)'!r} for {p}: expected one of {', '.join(allowed)}",
            path=str(p),
        )
    if not p.is_file():
        raise ModelLoadError(f"model file not found: {p}", path=str(p))
    return p


def format_window(window) -> str:
    return ",".join(str(int(v)) for v in window)


def parse_window(text: str | None, path: Path) -> tuple[int, int, int, int] | None:
    """The window an ONNX file declares (None: the whole 96x96 crop)."""
    if not text:
        return None
    try:
        r0, r1, c0, c1 = (int(v) for v in text.split(","))
    except ValueError:
        raise ModelLoadError(f"{path.name}: bad {WINDOW_METADATA_KEY} metadata {text[:40]!r}", path=str(path)) from None
    if not (0 <= r0 < r1 <= CROP and 0 <= c0 < c1 <= CROP):
        raise ModelLoadError(f"{path.name}: {WINDOW_METADATA_KEY} {text!r} is outside the {CROP}x{CROP} crop",
                             path=str(path))
    return r0, r1, c0, c1


def window_contains(outer, inner) -> bool:
    """Whether window ``outer`` (None: the whole crop) covers window ``inner``."""
    if outer is None:
        return True
    return outer[0] <= inner[0] and inner[1] <= outer[1] and outer[2] <= inner[2] and inner[3] <= outer[3]
