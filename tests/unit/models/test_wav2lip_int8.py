"""``lipserve quantize-onnx``: an int8 copy of a mouth-window export, calibrated on the bundled demo,
that both CPU engines run and that stays close to fp32 (it is an option: it changes the pictures)."""

from __future__ import annotations

import numpy as np
import pytest

from actors.generators.wav2lip import Wav2LipGenerator
from actors.models.wav2lip import save_random_checkpoint
from actors.models.wav2lip_export import export_onnx
from actors.models.wav2lip_quantize import calibration_inputs
from actors.models.wav2lip_window import MOUTH_WINDOW
from serve_app.cli.main import main
from tests.media import ASSETS


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("int8")
    fp32 = export_onnx(save_random_checkpoint(d / "w.pth", seed=4), d / "w.onnx")
    int8 = d / "w.int8.onnx"
    assert main(["quantize-onnx", "--onnx", str(fp32), "--out", str(int8), "--video",
                 str(ASSETS / "demo_template.mp4"), "--audio", str(ASSETS / "demo_speech.wav"), "--frames", "16"]) == 0
    return d, fp32, int8


def test_int8_copy_keeps_the_window_and_runs_on_both_engines(models):
    d, fp32, int8 = models
    faces, mels = calibration_inputs(ASSETS / "demo_template.mp4", ASSETS / "demo_speech.wav", d / "cache",
                                     max_frames=12)
    assert faces.shape == (12, 96, 96, 3) and mels.shape == (12, 80, 16)
    ref = Wav2LipGenerator(fp32, engine="onnxruntime").generate(faces, mels)
    for engine in ("onnxruntime", "openvino"):
        gen = Wav2LipGenerator(int8, engine=engine)
        assert gen.window == MOUTH_WINDOW
        got = gen.generate(faces, mels)
        r0, r1, c0, c1 = MOUTH_WINDOW
        assert _psnr(got[:, r0:r1, c0:c1], ref[:, r0:r1, c0:c1]) > 30, engine  # close to fp32, not equal
    assert int8.stat().st_size < 0.5 * fp32.stat().st_size  # int8 weights
