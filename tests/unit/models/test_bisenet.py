"""BiSeNet face parsing: public key layout, strict load, mask modes and the MuseTalk blend."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from actors.errors import InvalidParameterError, ModelLoadError
from actors.face import musetalk_blend as blend
from actors.face.parsing_mask import FaceParser, cheek_band_mask, jaw_dilation_kernel, labels_to_mask
from actors.models.bisenet import BiSeNet, load_bisenet, write_random_bisenet
from actors.models.musetalk.files import FACE_PARSING_WEIGHTS

# Keys and shapes of the public 79999_iter.pth (zllrunning/face-parsing.PyTorch), a sample per module.
PUBLIC_KEYS = {
    "cp.resnet.conv1.weight": (64, 3, 7, 7),
    "cp.resnet.bn1.running_var": (64,),
    "cp.resnet.layer1.1.conv2.weight": (64, 64, 3, 3),
    "cp.resnet.layer2.0.downsample.0.weight": (128, 64, 1, 1),
    "cp.resnet.layer4.1.bn2.weight": (512,),
    "cp.arm16.conv.conv.weight": (128, 256, 3, 3),
    "cp.arm32.conv_atten.weight": (128, 128, 1, 1),
    "cp.arm32.bn_atten.bias": (128,),
    "cp.conv_head32.conv.weight": (128, 128, 3, 3),
    "cp.conv_head16.bn.running_mean": (128,),
    "cp.conv_avg.conv.weight": (128, 512, 1, 1),
    "ffm.convblk.conv.weight": (256, 256, 1, 1),
    "ffm.conv1.weight": (64, 256, 1, 1),
    "ffm.conv2.weight": (256, 64, 1, 1),
    "conv_out.conv.conv.weight": (256, 256, 3, 3),
    "conv_out.conv_out.weight": (19, 256, 1, 1),
    "conv_out16.conv_out.weight": (19, 64, 1, 1),
    "conv_out32.conv.conv.weight": (64, 128, 3, 3),
}


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("parsing")
    write_random_bisenet(root / FACE_PARSING_WEIGHTS)
    return root


def test_public_key_layout():
    state = BiSeNet().state_dict()
    for key, shape in PUBLIC_KEYS.items():
        assert tuple(state[key].shape) == shape, key
    assert not any(k.startswith("sp.") for k in state)  # the spatial path is not in the public model
    n = sum(v.numel() for k, v in state.items() if "running" not in k and "num_batches" not in k)
    assert 13.0e6 < n < 13.5e6


def test_strict_load_and_forward(models_dir):
    net = load_bisenet(models_dir)
    with torch.inference_mode():
        out = net(torch.randn(1, 3, 512, 512))
    assert out.shape == (1, 19, 512, 512) and torch.isfinite(out).all()
    labels = FaceParser(net).labels(np.full((300, 300, 3), 128, np.uint8))
    assert labels.shape == (512, 512) and labels.min() >= 0 and labels.max() < 19


def test_load_errors_name_the_file(models_dir, tmp_path):
    with pytest.raises(ModelLoadError, match="face-parse-bisent/79999_iter.pth.*missing") as info:
        load_bisenet(tmp_path)
    assert str(tmp_path) not in str(info.value)
    bad = tmp_path / FACE_PARSING_WEIGHTS
    bad.parent.mkdir(parents=True)
    state = torch.load(models_dir / FACE_PARSING_WEIGHTS, weights_only=True)
    state["module.extra"] = state.pop("ffm.conv1.weight")
    torch.save({("module." + k): v for k, v in state.items()}, bad)
    with pytest.raises(ModelLoadError, match="not a BiSeNet.*1 missing, 1 unexpected"):
        load_bisenet(tmp_path)


def _face_labels() -> np.ndarray:
    """A synthetic parsing: skin ellipse, nose, lips, mouth, neck below, hair above."""
    lab = np.zeros((512, 512), np.uint8)
    cv2.ellipse(lab, (256, 250), (150, 200), 0, 0, 360, 1, -1)
    lab[40:120, 120:390] = 17  # hair
    lab[450:, 180:330] = 14  # neck
    cv2.ellipse(lab, (256, 260), (30, 60), 0, 0, 360, 10, -1)  # nose
    cv2.ellipse(lab, (256, 360), (60, 14), 0, 0, 360, 12, -1)
    cv2.ellipse(lab, (256, 385), (60, 14), 0, 0, 360, 13, -1)
    cv2.ellipse(lab, (256, 372), (40, 6), 0, 0, 360, 11, -1)
    return lab.astype(np.int64)


def test_raw_and_neck_modes():
    lab = _face_labels()
    raw = labels_to_mask(lab, "raw")
    assert set(np.unique(raw)) == {0, 255}
    np.testing.assert_array_equal(raw == 255, np.isin(lab, [1, 11, 12, 13]))
    neck = labels_to_mask(lab, "neck")
    np.testing.assert_array_equal(neck == 255, np.isin(lab, [1, 11, 12, 13, 14]))
    with pytest.raises(InvalidParameterError):
        labels_to_mask(lab, "chin")


def test_jaw_mode_grows_the_chin_keeps_cheeks_and_drops_the_nose():
    k = jaw_dilation_kernel()
    assert k.shape == (33, 33) and k[:10].sum() == 0 and k[10].sum() == 1 and k[20].sum() == 21 and k[32].sum() == 21
    bands = cheek_band_mask()
    assert bands[0, 166] == 255 and bands[0, 167] == 0 and bands[0, 345] == 0 and bands[0, 346] == 255
    lab = _face_labels()
    jaw = labels_to_mask(lab, "jaw") == 255
    assert not jaw[lab == 10].any()  # nose removed
    assert jaw[np.isin(lab, [11, 12, 13])].all()
    chin_raw = np.nonzero((lab == 1)[:, 256])[0].max()
    assert np.nonzero(jaw[:, 256])[0].max() > chin_raw + 5  # dilated below the chin
    # in the cheek bands the dilation is eroded twice by a 35 px wide ellipse: the mask pulls back
    # inside the face's side outline instead of swelling past it
    row = 250
    raw_left, raw_right = np.nonzero(lab[row] == 1)[0][[0, -1]]
    jaw_left, jaw_right = np.nonzero(jaw[row])[0][[0, -1]]
    assert raw_left < jaw_left <= raw_left + 40 and raw_right - 40 <= jaw_right < raw_right


def test_fallback_blend_touches_only_the_lower_half_of_the_box():
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (360, 480, 3), dtype=np.uint8)
    box = (180, 100, 300, 260)
    alpha = blend.blend_mask(frame, box)
    square, s = blend.blend_square(box)
    assert alpha.shape == (2 * s, 2 * s) and square == (240 - s, 180 - s, 240 + s, 180 + s)
    crop = np.full((256, 256, 3), 255, np.uint8)
    out = blend.paste(frame, crop, box, alpha)
    changed = np.nonzero((out != frame).any(axis=2))
    assert changed[0].min() >= 180 - blend._blur_kernel(2 * s, blend.BLUR_RATIO)  # near the box's middle row or below
    assert changed[0].max() < 260 and changed[1].min() >= 180 and changed[1].max() < 300
    assert (out[230, 240] > 250).all()  # fully generated in the core of the lower half


def test_parsed_blend_and_box_near_the_frame_edge(models_dir):
    parser = FaceParser(load_bisenet(models_dir))
    frame = np.random.default_rng(1).integers(0, 256, (300, 300, 3), dtype=np.uint8)
    box = (10, 150, 130, 300)  # the blend square leaves the frame on two sides
    alpha = blend.blend_mask(frame, box, parser, mode="raw")
    square, s = blend.blend_square(box)
    assert alpha.shape == (2 * s, 2 * s) and square[0] < 0 and square[3] > 300
    assert alpha[: s - blend._blur_kernel(2 * s, blend.BLUR_RATIO)].max() == 0  # nothing above the middle
    out = blend.paste(frame, np.zeros((256, 256, 3), np.uint8), box, alpha)
    assert out.shape == frame.shape
    np.testing.assert_array_equal(out[:140], frame[:140])
