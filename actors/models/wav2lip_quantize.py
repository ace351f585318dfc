"""Optional int8 Wav2Lip: static (QDQ) quantisation of an exported fp32 ONNX model.

Not the default: int8 changes the pictures. ``bench/bench_generator.py`` reports its speed and its
output PSNR against the fp32 model on the bundled demo; use it only where that is acceptable. The
result is an ordinary ``.onnx`` file the generator runs like any other.

Calibration: activations are calibrated on real inputs (``faces`` uint8[N,96,96,3] crops and their
``mels`` float32[N,80,16] windows, e.g. a template's avatar crops and speech), in batches of 8;
:func:`calibration_inputs` takes them from a template and an audio file (``lipserve quantize-onnx``).
A mouth-window export stays one (the quantiser keeps the model's metadata). On CPUs with AMX / VNNI
the int8 file runs several times faster on the OpenVINO engine than fp32 (bench/bench_generator.py).
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


def calibration_inputs(video_path: str | os.PathLike, audio_path: str | os.PathLike, cache_dir: str | os.PathLike,
                       box: tuple[int, int, int, int] | None = None, max_frames: int = 64):
    """(faces, mels) for :func:`quantize_int8`: up to ``max_frames`` crops of the template (its face
    tracked, or ``box``) with the audio's mel windows, taken evenly over the template."""
    from actors.avatar import AvatarCache, AvatarParams
    from actors.generators.mel import mel_features
    from actors.generators.wav2lip import CROP_SIZE
    from actors.media.audio import decode_audio

    avatar = AvatarCache(cache_dir).get_or_build(video_path, AvatarParams(crop_size=CROP_SIZE, box=box))
    rows = np.flatnonzero(avatar.present())
    rows = rows[np.linspace(0, len(rows) - 1, min(len(rows), int(max_frames))).round().astype(int)]
    mels = mel_features(decode_audio(audio_path), avatar.info.fps, avatar.n_frames)
    return np.asarray(avatar.crops())[rows], mels[rows]
