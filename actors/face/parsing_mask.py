"""Face-parsing masks for MuseTalk's blend: which pixels of the face square take the generated face.

:class:`FaceParser` runs BiSeNet on a face square (RGB, 512x512, ImageNet mean/std, as MuseTalk) and
returns per-pixel class labels; :func:`labels_to_mask` turns labels into a 0/255 mask by mode:

* ``raw`` (MuseTalk v1): skin 1, mouth 11, lips 12/13;
* ``neck``: ``raw`` plus the neck 14;
* ``jaw`` (v1.5 default): skin dilated downwards by a cone-shaped kernel (so the chin can move),
  in the outer cheek bands (``|x - 256| > 90`` at 512 scale) that dilation eroded twice by a flat
  35x3 ellipse (so the cheeks' outline does not swell), minus the nose 10, plus 11-13.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch

from actors.errors import InvalidParameterError
from actors.models.bisenet import IMAGENET_MEAN, IMAGENET_STD, BiSeNet

PARSE_SIZE = 512
SKIN, NOSE, MOUTH, UPPER_LIP, LOWER_LIP, NECK = 1, 10, 11, 12, 13, 14
MODES = ("jaw", "raw", "neck")
CHEEK_WIDTH = 90  # px at 512 scale, either side of the centre (MuseTalk v1.5's default)


def jaw_dilation_kernel(cone_height: int = 21, tail_height: int = 12) -> np.ndarray:
    """MuseTalk's 33x33 dilation kernel: empty top half, a cone widening by 2 px a row from the
    centre row to ``cone_height``, then a rectangular tail of the cone's base width."""
    size = cone_height + tail_height
    kernel = np.zeros((size, size), np.uint8)
    cx = size // 2
    for row in range(cone_height // 2, cone_height):
        half = (2 * (row - cone_height // 2) + 1) // 2
        kernel[row, cx - half : cx + half + 1] = 1
    base_half = int(kernel[cone_height - 1].sum()) // 2 if cone_height > 0 else 0
    kernel[cone_height:, max(0, cx - base_half) : min(size, cx + base_half + 1)] = 1
    return kernel


def cheek_band_mask(width: int = CHEEK_WIDTH, size: int = PARSE_SIZE) -> np.ndarray:
    """255 where ``x <= centre - width`` or ``x >= centre + width`` (the outer cheeks), else 0."""
    mask = np.zeros((size, size), np.uint8)
    c = size // 2
    mask[:, : c - width + 1] = 255  # cv2.rectangle's right edge is inclusive
    mask[:, c + width :] = 255
    return mask


_JAW_KERNEL = jaw_dilation_kernel()
_CHEEK_KERNEL = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (35, 3))
_CHEEK_BANDS = cheek_band_mask()


def labels_to_mask(labels: np.ndarray, mode: str = "jaw") -> np.ndarray:
    """``int[512,512]`` parsing labels -> ``uint8[512,512]`` mask (255 = take the generated face)."""
    labels = np.asarray(labels)
    if mode not in MODES:
        raise InvalidParameterError(f"face parsing mode must be one of {MODES}, got {mode!r}")
    mouth = np.isin(labels, [MOUTH, UPPER_LIP, LOWER_LIP])
    if mode == "raw":
        keep = mouth | (labels == SKIN)
    elif mode == "neck":
        keep = mouth | np.isin(labels, [SKIN, NECK])
    else:
        if labels.shape != _CHEEK_BANDS.shape:
            raise InvalidParameterError(f"jaw mode works on {PARSE_SIZE}x{PARSE_SIZE} labels, got {labels.shape}")
        skin = np.where(labels == SKIN, 255, 0).astype(np.uint8)
        dilated = cv2.dilate(skin, _JAW_KERNEL, iterations=1)
        eroded = cv2.erode(dilated, _CHEEK_KERNEL, iterations=2)
        region = cv2.bitwise_or(cv2.bitwise_and(eroded, _CHEEK_BANDS), cv2.bitwise_and(dilated, ~_CHEEK_BANDS))
        keep = ((region == 255) & (labels != NOSE)) | mouth
    return np.where(keep, 255, 0).astype(np.uint8)


class FaceParser:
    """BiSeNet labels of a BGR face square, computed at 512x512."""

    def __init__(self, net: BiSeNet, device: str = "cpu"):
        self.net = net
        self.device = device
        self._mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32).view(1, 3, 1, 1)
        self._std = torch.tensor(IMAGENET_STD, dtype=torch.float32).view(1, 3, 1, 1)

    @torch.inference_mode()
    def labels(self, square_bgr: np.ndarray) -> np.ndarray:
        """``uint8[H,W,3]`` BGR -> ``int64[512,512]`` labels (of the square resized to 512)."""
        if square_bgr.ndim != 3 or square_bgr.shape[2] != 3 or min(square_bgr.shape[:2]) < 1:
            raise InvalidParameterError(f"face parsing needs an HxWx3 image, got {square_bgr.shape}")
        h, w = square_bgr.shape[:2]
        # PIL's bilinear (the reference) filters when shrinking; INTER_AREA is the closest cv2 match.
        interp = cv2.INTER_AREA if min(h, w) > PARSE_SIZE else cv2.INTER_LINEAR
        rgb = cv2.resize(square_bgr, (PARSE_SIZE, PARSE_SIZE), interpolation=interp)[..., ::-1]
        x = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None].float() / 255.0
        x = ((x - self._mean) / self._std).to(self.device)
        return self.net(x)[0].argmax(0).cpu().numpy()

    def mask(self, square_bgr: np.ndarray, mode: str = "jaw") -> np.ndarray:
        """``uint8`` mask (0/255, soft at the edges) at the square's own size."""
        m = labels_to_mask(self.labels(square_bgr), mode)
        h, w = square_bgr.shape[:2]
        # The reference resizes with PIL's default for 8-bit masks, bicubic.
        return cv2.resize(m, (w, h), interpolation=cv2.INTER_CUBIC)
