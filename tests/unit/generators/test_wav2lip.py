"""Wav2Lip generator: public key layout, checkpoint loading, ONNX export parity, errors, Generator wrapper."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from actors.errors import ModelLoadError
from actors.generators.base import Generator
from actors.generators.wav2lip import Wav2LipGenerator, build_face_input
from actors.models.wav2lip import Wav2Lip, save_random_checkpoint
from actors.models.wav2lip_export import export_onnx
from actors.models.wav2lip_runtime import load_wav2lip

# ---------------------------------------------------------------------------------------------------
# The public generator's layout, transcribed from Rudrabha/Wav2Lip models/wav2lip.py (conv blocks as
# (cin, cout, kernel); "T" marks a ConvTranspose2d block). Every block is conv (+bias) + BatchNorm2d.

FACE_ENCODER = [
    [(6, 16, 7)],
    [(16, 32, 3), (32, 32, 3), (32, 32, 3)],
    [(32, 64, 3), (64, 64, 3), (64, 64, 3), (64, 64, 3)],
    [(64, 128, 3), (128, 128, 3), (128, 128, 3)],
    [(128, 256, 3), (256, 256, 3), (256, 256, 3)],
    [(256, 512, 3), (512, 512, 3)],
    [(512, 512, 3), (512, 512, 1)],
]
AUDIO_ENCODER = [
    (1, 32, 3), (32, 32, 3), (32, 32, 3),
    (32, 64, 3), (64, 64, 3), (64, 64, 3),
    (64, 128, 3), (128, 128, 3), (128, 128, 3),
    (128, 256, 3), (256, 256, 3),
    (256, 512, 3), (512, 512, 1),
]
FACE_DECODER = [
    [(512, 512, 1)],
    [("T", 1024, 512, 3), (512, 512, 3)],
    [("T", 1024, 512, 3), (512, 512, 3), (512, 512, 3)],
    [("T", 768, 384, 3), (384, 384, 3), (384, 384, 3)],
    [("T", 512, 256, 3), (256, 256, 3), (256, 256, 3)],
    [("T", 320, 128, 3), (128, 128, 3), (128, 128, 3)],
    [("T", 160, 64, 3), (64, 64, 3), (64, 64, 3)],
]


def _block_keys(prefix: str, spec) -> dict[str, tuple]:
    if spec[0] == "T":
        _, cin, cout, k = spec
        wshape = (cin, cout, k, k)  # ConvTranspose2d weight is [in, out, k, k]
    else:
        cin, cout, k = spec
        wshape = (cout, cin, k, k)
    p = f"{prefix}.conv_block"
    return {
        f"{p}.0.weight": wshape, f"{p}.0.bias": (cout,),
        f"{p}.1.weight": (cout,), f"{p}.1.bias": (cout,),
        f"{p}.1.running_mean": (cout,), f"{p}.1.running_var": (cout,), f"{p}.1.num_batches_tracked": (),
    }


def public_layout() -> dict[str, tuple]:
    table: dict[str, tuple] = {}
    for i, stage in enumerate(FACE_ENCODER):
        for j, spec in enumerate(stage):
            table.update(_block_keys(f"face_encoder_blocks.{i}.{j}", spec))
    for j, spec in enumerate(AUDIO_ENCODER):
        table.update(_block_keys(f"audio_encoder.{j}", spec))
    for i, stage in enumerate(FACE_DECODER):
        for j, spec in enumerate(stage):
            table.update(_block_keys(f"face_decoder_blocks.{i}.{j}", spec))
    table.update(_block_keys("output_block.0", (80, 32, 3)))
    table.update({"output_block.1.weight": (3, 32, 1, 1), "output_block.1.bias": (3,)})
    return table


SPOT_CHECKS = {
    "face_encoder_blocks.0.0.conv_block.0.weight": (16, 6, 7, 7),
    "face_encoder_blocks.0.0.conv_block.1.running_mean": (16,),
    "face_encoder_blocks.1.2.conv_block.0.weight": (32, 32, 3, 3),
    "face_encoder_blocks.2.3.conv_block.1.running_var": (64,),
    "face_encoder_blocks.5.1.conv_block.0.weight": (512, 512, 3, 3),
    "face_encoder_blocks.6.1.conv_block.0.weight": (512, 512, 1, 1),
    "face_encoder_blocks.6.1.conv_block.1.num_batches_tracked": (),
    "audio_encoder.0.conv_block.0.weight": (32, 1, 3, 3),
    "audio_encoder.3.conv_block.0.weight": (64, 32, 3, 3),
    "audio_encoder.9.conv_block.1.bias": (256,),
    "audio_encoder.11.conv_block.0.weight": (512, 256, 3, 3),
    "audio_encoder.12.conv_block.0.weight": (512, 512, 1, 1),
    "audio_encoder.12.conv_block.1.running_var": (512,),
    "face_decoder_blocks.0.0.conv_block.0.weight": (512, 512, 1, 1),
    "face_decoder_blocks.1.0.conv_block.0.weight": (1024, 512, 3, 3),
    "face_decoder_blocks.3.0.conv_block.0.weight": (768, 384, 3, 3),
    "face_decoder_blocks.5.2.conv_block.1.weight": (128,),
    "face_decoder_blocks.6.0.conv_block.0.weight": (160, 64, 3, 3),
    "face_decoder_blocks.6.2.conv_block.1.running_mean": (64,),
    "output_block.0.conv_block.0.weight": (32, 80, 3, 3),
    "output_block.0.conv_block.1.running_var": (32,),
    "output_block.1.weight": (3, 32, 1, 1),
    "output_block.1.bias": (3,),
}
PUBLIC_N_KEYS = 352
PUBLIC_N_PARAMS = 36_298_035  # "about 36.3 M"


def _shapes(sd) -> dict[str, tuple]:
    return {k: tuple(v.shape) for k, v in sd.items()}


def test_state_dict_matches_public_layout():
    model = Wav2Lip()
    got = _shapes(model.state_dict())
    expected = public_layout()
    assert len(expected) == PUBLIC_N_KEYS
    assert len(got) == PUBLIC_N_KEYS
    assert sum(p.numel() for p in model.parameters()) == PUBLIC_N_PARAMS
    for key, shape in SPOT_CHECKS.items():
        assert got.get(key) == shape, key
    assert got == expected
    assert list(got) == list(expected)  # same order, too (a public checkpoint lists keys in this order)


def test_forward_shape_and_range():
    model = Wav2Lip().eval()
    with torch.inference_mode():
        out = model(torch.randn(2, 1, 80, 16), torch.rand(2, 6, 96, 96))
    assert out.shape == (2, 3, 96, 96)
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    with pytest.raises(ValueError, match="4-D"):
        model(torch.randn(2, 5, 1, 80, 16), torch.rand(2, 6, 5, 96, 96))


# ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("w2l")
    ckpt = save_random_checkpoint(d / "random.pth", seed=1)
    onnx_path = export_onnx(ckpt, d / "random.onnx", window=None)
    return {"dir": d, "pth": ckpt, "onnx": onnx_path}


def _inputs(b: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    mel = rng.uniform(-4, 4, (b, 1, 80, 16)).astype(np.float32)
    face = rng.uniform(0, 1, (b, 6, 96, 96)).astype(np.float32)
    return mel, face


def test_random_checkpoint_is_public_format_and_loads(models):
    raw = torch.load(models["pth"], map_location="cpu", weights_only=True)
    assert set(raw) == {"state_dict", "global_step", "global_epoch", "optimizer"}
    assert all(k.startswith("module.") for k in raw["state_dict"])

    runner = load_wav2lip(models["pth"])
    assert runner.backend == "torch" and runner.device == "cpu"
    mel, face = _inputs(2)
    out = runner(mel, face)
    assert out.shape == (2, 3, 96, 96) and out.dtype == np.float32
    assert 0.0 <= out.min() and out.max() <= 1.0

    # A bare state dict without prefixes loads too and gives the same network.
    bare = models["dir"] / "bare.pt"
    torch.save({k[len("module."):]: v for k, v in raw["state_dict"].items()}, bare)
    np.testing.assert_array_equal(load_wav2lip(bare)(mel, face), out)
    # Torch tensors are accepted as inputs as well.
    np.testing.assert_array_equal(runner(torch.from_numpy(mel), torch.from_numpy(face)), out)


@pytest.mark.parametrize("batch", [1, 3])
def test_onnx_export_matches_torch(models, batch):
    torch_runner = load_wav2lip(models["pth"])
    onnx_runner = load_wav2lip(models["onnx"], engine="onnxruntime")
    assert onnx_runner.backend == "onnxruntime"
    assert onnx_runner.providers == ["CPUExecutionProvider"] and onnx_runner.device == "cpu"
    mel, face = _inputs(batch, seed=batch)
    ref, got = torch_runner(mel, face), onnx_runner(mel, face)
    assert got.shape == (batch, 3, 96, 96) and got.dtype == np.float32
    assert float(np.abs(ref - got).max()) < 1e-3


def test_onnx_io_names_and_dynamic_batch(models):
    import onnx

    model = onnx.load(str(models["onnx"]), load_external_data=False)
    assert [i.name for i in model.graph.input] == ["mel", "face"]
    assert [o.name for o in model.graph.output] == ["out"]
    for value in list(model.graph.input) + list(model.graph.output):
        assert not value.type.tensor_type.shape.dim[0].HasField("dim_value")  # symbolic batch
    assert not list(models["dir"].glob(".*.tmp"))  # no temporary left behind


# ---------------------------------------------------------------------------------------------------


def test_missing_file(tmp_path):
    path = tmp_path / "nope.pth"
    with pytest.raises(ModelLoadError, match="not found") as ei:
        load_wav2lip(path)
    assert str(path) in str(ei.value)
    assert ei.value.to_dict()["code"] == "model_load_failed"


def test_unknown_suffix(tmp_path):
    path = tmp_path / "weights.bin"
    path.write_bytes(b"\0" * 16)
    with pytest.raises(ModelLoadError, match="unknown model file type") as ei:
        load_wav2lip(path)
    assert str(path) in str(ei.value)


def test_wrong_keys_are_listed(models, tmp_path):
    raw = torch.load(models["pth"], map_location="cpu", weights_only=True)
    sd = dict(raw["state_dict"])
    sd.pop("module.output_block.1.weight")
    sd["module.extra_head.weight"] = torch.zeros(3)
    path = tmp_path / "wrong_keys.pth"
    torch.save({"state_dict": sd}, path)
    with pytest.raises(ModelLoadError) as ei:
        load_wav2lip(path)
    msg = str(ei.value)
    assert str(path) in msg
    assert "output_block.1.weight" in msg and "extra_head.weight" in msg


def test_wrong_shape_is_reported(models, tmp_path):
    raw = torch.load(models["pth"], map_location="cpu", weights_only=True)
    sd = dict(raw["state_dict"])
    sd["module.output_block.1.weight"] = torch.zeros(3, 64, 1, 1)
    path = tmp_path / "wrong_shape.pth"
    torch.save({"state_dict": sd}, path)
    with pytest.raises(ModelLoadError, match="wrong shape") as ei:
        load_wav2lip(path)
    assert str(path) in str(ei.value) and "output_block.1.weight" in str(ei.value)


def test_corrupt_files(tmp_path):
    for name in ("garbage.pth", "garbage.onnx"):
        path = tmp_path / name
        path.write_bytes(b"this is not a model")
        with pytest.raises(ModelLoadError) as ei:
            load_wav2lip(path)
        assert str(path) in str(ei.value)
    html = tmp_path / "download.pth"
    html.write_bytes(b"<!DOCTYPE html><html><body>Sign in</body></html>")
    with pytest.raises(ModelLoadError, match="HTML page"):
        load_wav2lip(html)
    not_tensors = tmp_path / "list.pth"
    torch.save([1, 2, 3], not_tensors)
    with pytest.raises(ModelLoadError, match="not a Wav2Lip checkpoint"):
        load_wav2lip(not_tensors)


# ---------------------------------------------------------------------------------------------------


def test_build_face_input_masks_lower_half():
    rng = np.random.default_rng(0)
    faces = rng.integers(1, 256, (2, 96, 96, 3), dtype=np.uint8)
    x = build_face_input(faces)
    assert x.shape == (2, 6, 96, 96) and x.dtype == np.float32
    bgr = faces.transpose(0, 3, 1, 2).astype(np.float32) / 255.0
    np.testing.assert_allclose(x[:, 3:], bgr, rtol=0, atol=1e-7)  # reference: the unmasked crop
    np.testing.assert_allclose(x[:, :3, :48], bgr[:, :, :48], rtol=0, atol=1e-7)  # upper half kept
    assert not x[:, :3, 48:].any()  # lower half zeroed
    assert x[:, :3, :48].min() > 0


def test_generator(models):
    gen = Wav2LipGenerator(models["pth"], batch_size=2, mouth_window=False)  # the whole crop (window: test_wav2lip_window.py)
    assert isinstance(gen, Generator)
    assert gen.name == "wav2lip" and gen.crop_size == 96
    rng = np.random.default_rng(3)
    faces = rng.integers(0, 256, (5, 96, 96, 3), dtype=np.uint8)
    mels = rng.uniform(-4, 4, (5, 80, 16)).astype(np.float32)
    out = gen.generate(faces, mels)
    assert out.shape == (5, 96, 96, 3) and out.dtype == np.uint8
    # Chunking does not change results; the wrapper equals the raw network.
    ref = load_wav2lip(models["pth"])(mels[:, None], build_face_input(faces))
    expected = np.clip(ref.transpose(0, 2, 3, 1) * 255 + 0.5, 0, 255).astype(np.uint8)
    assert np.abs(out.astype(int) - expected.astype(int)).max() <= 1
    # ONNX-backed generator agrees to within one grey level.
    for engine in ("onnxruntime", "openvino"):
        onnx_gen = Wav2LipGenerator(models["onnx"], batch_size=4, engine=engine)  # a whole-crop export
        assert onnx_gen.backend == engine and onnx_gen.window is None
        assert np.abs(onnx_gen.generate(faces, mels).astype(int) - out.astype(int)).max() <= 1
    assert Wav2LipGenerator(models["onnx"]).backend == "openvino"  # the default CPU engine (installed)
    assert gen.generate(faces[:0], mels[:0]).shape == (0, 96, 96, 3)


def test_generator_rejects_bad_shapes(models):
    from actors.errors import InvalidParameterError

    gen = Wav2LipGenerator(models["pth"])
    with pytest.raises(InvalidParameterError):
        gen.generate(np.zeros((2, 64, 64, 3), np.uint8), np.zeros((2, 80, 16), np.float32))
    with pytest.raises(InvalidParameterError):
        gen.generate(np.zeros((2, 96, 96, 3), np.uint8), np.zeros((3, 80, 16), np.float32))


@pytest.mark.parametrize("batch", [1, 5])
def test_openvino_engine_matches_onnxruntime(models, batch):
    ov = load_wav2lip(models["onnx"], engine="openvino", threads=2)
    ort_runner = load_wav2lip(models["onnx"], engine="onnxruntime")
    assert ov.backend == "openvino" and ov.precision == "fp32" and ov.window is None
    mel, face = _inputs(batch, seed=10 + batch)
    got, ref = ov(mel, face), ort_runner(mel, face)
    assert got.shape == (batch, 3, 96, 96) and got.dtype == np.float32
    assert float(np.abs(got - ref).max()) < 1e-4  # fp32: the same sums, rounded in another order
    assert load_wav2lip(models["onnx"], device="openvino").backend == "openvino"  # the older spelling


def test_bf16_is_an_openvino_option_only(models):
    mel, face = _inputs(2, seed=4)
    bf16 = load_wav2lip(models["onnx"], engine="openvino", precision="bf16")
    assert bf16.precision in ("bf16", "fp32")  # fp32 on a CPU without bf16 support
    ref = load_wav2lip(models["onnx"], engine="openvino")(mel, face)
    assert float(np.abs(bf16(mel, face) - ref).max()) < 0.05
    for kwargs in ({"engine": "onnxruntime"}, {}):
        path = models["onnx"] if kwargs else models["pth"]
        with pytest.raises(ModelLoadError, match="bf16"):
            load_wav2lip(path, precision="bf16", **kwargs)
    with pytest.raises(ModelLoadError, match="unknown engine"):
        load_wav2lip(models["onnx"], engine="tensorflow")
