"""Optional int8 Wav2Lip: static (QDQ) quantisation of an exported fp32 ONNX model.

Not the default: int8 changes the pictures. ``bench/bench_generator.py`` reports its speed and its
output PSNR against the fp32 model on the bundled demo; use it only where that is acceptable. The
result is an ordinary ``.onnx`` file the generator runs like any other.

Calibration: activations are calibrated on real inputs (``faces`` uint8[N,96,96,3] crops and their
``mels`` float32[N,80,16] windows, e.g. a template's avatar crops and speech), in batches of 8.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from actors.media.atomic import atomic_write


def quantize_int8(onnx_path: str | os.PathLike, out_path: str | os.PathLike, faces: np.ndarray,
                  mels: np.ndarray) -> Path:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    from actors.generators.wav2lip import build_face_input, build_mel_input

    class _Reader(CalibrationDataReader):
        def __init__(self):
            self._batches = iter([
                {"mel": build_mel_input(mels[lo:lo + 8]), "face": build_face_input(faces[lo:lo + 8])}
                for lo in range(0, len(faces), 8)
            ])

        def get_next(self):
            return next(self._batches, None)

    out = Path(out_path)

    def write(tmp) -> None:
        quantize_static(str(onnx_path), str(tmp), _Reader(), quant_format=QuantFormat.QDQ,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True)

    atomic_write(out, write)
    return out
