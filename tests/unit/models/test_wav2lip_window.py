"""The mouth-window Wav2Lip decoder computes the full network's output over its window, and a render
with it pastes the same frames as one with the whole crop decoded."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from actors.compose import paste_source_window
from actors.errors import ModelLoadError
from actors.generators.wav2lip import Wav2LipGenerator
from actors.models.wav2lip import build_wav2lip_from_checkpoint, save_random_checkpoint
from actors.models.wav2lip_export import export_onnx
from actors.models.wav2lip_runtime import load_wav2lip
from actors.models.wav2lip_window import MOUTH_WINDOW, Wav2LipWindowed, decoder_windows


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("w2l-window")
    ckpt = save_random_checkpoint(d / "random.pth", seed=3)
    return {"pth": ckpt, "mouth": export_onnx(ckpt, d / "mouth.onnx"),
            "full": export_onnx(ckpt, d / "full.onnx", window=None),
            "tiny": export_onnx(ckpt, d / "tiny.onnx", window=(60, 70, 40, 50), verify=False)}


def _inputs(b: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    return (rng.uniform(-4, 4, (b, 1, 80, 16)).astype(np.float32),
            rng.uniform(0, 1, (b, 6, 96, 96)).astype(np.float32))


@pytest.mark.parametrize("window", [MOUTH_WINDOW, (0, 96, 0, 96), (0, 7, 0, 5), (90, 96, 91, 96), (47, 48, 3, 90)])
def test_windowed_network_equals_the_full_one_over_its_window(models, window):
    model = build_wav2lip_from_checkpoint(models["pth"])
    mel, face = (torch.from_numpy(a) for a in _inputs(3, seed=sum(window)))
    with torch.inference_mode():
        full = model(mel, face)
        part = Wav2LipWindowed(model, window)(mel, face)
    r0, r1, c0, c1 = window
    assert part.shape == (3, 3, r1 - r0, c1 - c0)
    assert float((full[:, :, r0:r1, c0:c1] - part).abs().max()) < 1e-6


def test_decoder_windows_shrink_the_high_resolution_stages():
    wins = decoder_windows(MOUTH_WINDOW)
    assert wins[:3] == [((0, 1), (0, 1)), ((0, 3), (0, 3)), ((0, 6), (0, 6))]
    (r, c) = wins[-1]
    assert (r[1] - r[0]) * (c[1] - c[0]) < 0.45 * 96 * 96  # the 96-px stages run on well under half
    with pytest.raises(ValueError):
        decoder_windows((50, 40, 0, 96))


def test_mouth_window_is_what_the_paste_reads():
    assert MOUTH_WINDOW == paste_source_window(96)
    r0, r1, c0, c1 = MOUTH_WINDOW
    assert r0 >= 40 and r1 <= 96 and c0 >= 10 and c1 <= 86  # the lower-middle of the crop only


def test_onnx_mouth_export_declares_its_window_and_matches_torch(models):
    mouth, full = load_wav2lip(models["mouth"]), load_wav2lip(models["full"])
    assert mouth.window == MOUTH_WINDOW and full.window is None
    mel, face = _inputs(2, seed=7)
    r0, r1, c0, c1 = MOUTH_WINDOW
    got, ref = mouth(mel, face), full(mel, face)
    assert got.shape == (2, 3, r1 - r0, c1 - c0)
    assert float(np.abs(got - ref[:, :, r0:r1, c0:c1]).max()) < 1e-5
    assert load_wav2lip(models["pth"], window=MOUTH_WINDOW)(mel, face).shape == got.shape


def test_generator_pastes_the_same_frames_with_the_window_as_with_the_whole_crop(models):
    rng = np.random.default_rng(5)
    faces = rng.integers(0, 256, (6, 96, 96, 3), np.uint8)
    mels = rng.uniform(-4, 4, (6, 80, 16)).astype(np.float32)
    by_kind = {}
    for kind, path, window in [("onnx-mouth", models["mouth"], True), ("onnx-full", models["full"], False),
                               ("torch-mouth", models["pth"], True), ("torch-full", models["pth"], False)]:
        gen = Wav2LipGenerator(path, mouth_window=window)
        assert (gen.window is not None) == window
        by_kind[kind] = (gen, gen.generate(faces, mels))
    r0, r1, c0, c1 = MOUTH_WINDOW
    mouth_crops = by_kind["onnx-mouth"][1]
    outside = np.ones((96, 96), bool)
    outside[r0:r1, c0:c1] = False
    assert np.array_equal(mouth_crops[:, outside], faces[:, outside])  # the input crop outside the window
    assert np.abs(mouth_crops.astype(int) - by_kind["onnx-full"][1].astype(int))[:, r0:r1, c0:c1].max() <= 1
    assert np.abs(by_kind["torch-mouth"][1].astype(int) - by_kind["torch-full"][1].astype(int))[:, r0:r1, c0:c1].max() <= 1

    geometry = Wav2LipGenerator.crop_geometry
    frame = rng.integers(0, 256, (300, 260, 3), np.uint8)
    for box in [(30, 40, 230, 280), (60, 70, 120, 140), (10, 10, 250, 120)]:
        a = geometry.paste(frame, box, by_kind["onnx-full"][1][0])
        b = geometry.paste(frame, box, mouth_crops[0])
        scrambled = rng.integers(0, 256, (96, 96, 3), np.uint8)
        scrambled[r0:r1, c0:c1] = mouth_crops[0][r0:r1, c0:c1]
        c = geometry.paste(frame, box, scrambled)
        assert np.abs(a.astype(int) - b.astype(int)).max() <= 2  # rounding of the two graphs only
        assert np.array_equal(b, c)  # what lies outside the window is never read


def test_an_onnx_file_with_a_smaller_window_is_refused(models):
    with pytest.raises(ModelLoadError, match="export it again") as ei:
        Wav2LipGenerator(models["tiny"])
    assert "tiny.onnx" in str(ei.value)


def test_onnx_cpu_generator_does_not_import_torch(models):
    code = ("import sys; from actors.generators.wav2lip import Wav2LipGenerator; import numpy as np; "
            f"g = Wav2LipGenerator({str(models['mouth'])!r}, threads=1); "
            "g.generate(np.zeros((2, 96, 96, 3), np.uint8), np.zeros((2, 80, 16), np.float32)); "
            "print('torch' in sys.modules)")
    repo = Path(__file__).resolve().parents[3]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=repo)
    assert out.stdout.strip() == "False", out.stderr[-2000:]
