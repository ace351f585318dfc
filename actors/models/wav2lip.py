"""The Wav2Lip generator network and its checkpoints.

``Wav2Lip`` reproduces the public generator (Rudrabha/Wav2Lip, ``models/wav2lip.py`` +
``models/conv.py``) layer for layer, so the public ``wav2lip.pth`` / ``wav2lip_gan.pth`` checkpoints
load with ``strict=True``: same state-dict keys, same shapes (about 36.3 M parameters). The module
tree is built from compact layer tables below rather than written out by hand.

Only the 4-D inference form is supported: ``forward(mel[B,1,80,16], face[B,6,96,96]) -> [B,3,96,96]``
in [0, 1]. (The training code's 5-D ``(B, T, ...)`` form just folds T into B; callers do that
themselves.)

Running it (torch or onnxruntime) is ``wav2lip_runtime.py``; exporting it to ONNX ``wav2lip_export.py``.

No weights are shipped: the public Wav2Lip weights are licensed for non-commercial use only, so the
project loads what a user supplies. :func:`save_random_checkpoint` writes a random-init checkpoint in
the public format for tests and benchmarks.
"""

from __future__ import annotations

import logging
import os
import pickle
from pathlib import Path
from typing import Any

import torch
from torch import nn

from actors.errors import ModelLoadError
from actors.media.atomic import atomic_write
from actors.models.files import not_weights_hint
from actors.models.wav2lip_spec import (  # noqa: F401 - re-exported: the network's I/O contract
    FACE_SHAPE, MEL_SHAPE, ONNX_SUFFIXES, OUT_SHAPE, TORCH_SUFFIXES, check_model_path,
)

log = logging.getLogger(__name__)



# --------------------------------------------------------------------------------------------------
# Building blocks. Attribute names (``conv_block``, ``act``) are part of the checkpoint key layout.


class ConvBN(nn.Module):
    """Conv2d -> BatchNorm2d, optionally plus the block input (same shape), then ReLU."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: Any = 1, padding: int = 0, residual: bool = False):
        super().__init__()
        self.conv_block = nn.Sequential(nn.Conv2d(cin, cout, kernel, stride, padding), nn.BatchNorm2d(cout))
        self.act = nn.ReLU()
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv_block(x)
        if self.residual:
            y = y + x
        return self.act(y)


class UpConvBN(nn.Module):
    """ConvTranspose2d -> BatchNorm2d -> ReLU (the decoder's upsampling step)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, padding: int, output_padding: int = 0):
        super().__init__()
        self.conv_block = nn.Sequential(
            nn.ConvTranspose2d(cin, cout, kernel, stride, padding, output_padding), nn.BatchNorm2d(cout)
        )
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv_block(x))


def _down(cin: int, cout: int, kernel: int = 3, stride: Any = 1, padding: int = 1, n_res: int = 0) -> list[nn.Module]:
    """One plain conv block followed by ``n_res`` residual 3x3/stride-1 blocks at ``cout`` channels."""
    return [ConvBN(cin, cout, kernel, stride, padding)] + [
        ConvBN(cout, cout, 3, 1, 1, residual=True) for _ in range(n_res)
    ]


def _up(cin: int, cout: int, stride: int, padding: int, output_padding: int, n_res: int) -> list[nn.Module]:
    """One 3x3 transposed-conv block followed by ``n_res`` residual 3x3 blocks."""
    return [UpConvBN(cin, cout, 3, stride, padding, output_padding)] + [
        ConvBN(cout, cout, 3, 1, 1, residual=True) for _ in range(n_res)
    ]


# Face encoder: seven stages, 96x96 -> 1x1. Each entry: (cin, cout, kernel, stride, padding, n_res).
_FACE_ENCODER = [
    (6, 16, 7, 1, 3, 0),  # 96
    (16, 32, 3, 2, 1, 2),  # 48
    (32, 64, 3, 2, 1, 3),  # 24
    (64, 128, 3, 2, 1, 2),  # 12
    (128, 256, 3, 2, 1, 2),  # 6
    (256, 512, 3, 2, 1, 1),  # 3
]  # the last stage (3x3 valid conv then 1x1 conv, 512 ch) is added explicitly

# Audio encoder on the 80x16 mel patch -> 512x1x1, one flat Sequential. Same tuple layout.
_AUDIO_ENCODER = [
    (1, 32, 3, 1, 1, 2),  # 80x16
    (32, 64, 3, (3, 1), 1, 2),  # 27x16
    (64, 128, 3, 3, 1, 2),  # 9x6
    (128, 256, 3, (3, 2), 1, 1),  # 3x3
]  # followed by a 3x3 valid conv (256->512) and a 1x1 conv (512->512)

# Face decoder: stage 0 is a 1x1 conv on the audio embedding; the rest upsample. Each entry:
# (cin, cout, stride, padding, output_padding, n_res). cin counts the concatenated skip features.
_FACE_DECODER = [
    (1024, 512, 1, 0, 0, 1),  # 1 -> 3
    (1024, 512, 2, 1, 1, 2),  # 6
    (768, 384, 2, 1, 1, 2),  # 12
    (512, 256, 2, 1, 1, 2),  # 24
    (320, 128, 2, 1, 1, 2),  # 48
    (160, 64, 2, 1, 1, 2),  # 96
]


class Wav2Lip(nn.Module):
    """The public Wav2Lip generator (state-dict compatible). 4-D inference form only.

    ``forward(mel, face)``: ``mel`` float ``[B,1,80,16]``, ``face`` float ``[B,6,96,96]`` (channels 0-2
    the crop with its lower half zeroed, 3-5 the reference crop; BGR/255) -> ``[B,3,96,96]`` in [0, 1].
    """

    def __init__(self) -> None:
        super().__init__()
        face_stages = [nn.Sequential(*_down(*spec[:5], n_res=spec[5])) for spec in _FACE_ENCODER]
        face_stages.append(nn.Sequential(ConvBN(512, 512, 3, 1, 0), ConvBN(512, 512, 1, 1, 0)))
        self.face_encoder_blocks = nn.ModuleList(face_stages)

        audio_layers: list[nn.Module] = []
        for *conv, n_res in _AUDIO_ENCODER:
            audio_layers += _down(*conv, n_res=n_res)
        audio_layers += [ConvBN(256, 512, 3, 1, 0), ConvBN(512, 512, 1, 1, 0)]
        self.audio_encoder = nn.Sequential(*audio_layers)

        decoder = [nn.Sequential(ConvBN(512, 512, 1, 1, 0))]
        decoder += [nn.Sequential(*_up(*spec)) for spec in _FACE_DECODER]
        self.face_decoder_blocks = nn.ModuleList(decoder)

        self.output_block = nn.Sequential(ConvBN(80, 32, 3, 1, 1), nn.Conv2d(32, 3, 1, 1, 0), nn.Sigmoid())

    def forward(self, mel: torch.Tensor, face: torch.Tensor) -> torch.Tensor:
        if mel.dim() != 4 or face.dim() != 4:
            raise ValueError(
                f"Wav2Lip supports the 4-D inference form only: mel [B,1,80,16], face [B,6,96,96]; "
                f"got mel {tuple(mel.shape)}, face {tuple(face.shape)}"
            )
        skips = []
        x = face
        for stage in self.face_encoder_blocks:
            x = stage(x)
            skips.append(x)
        x = self.audio_encoder(mel)  # [B,512,1,1]
        for stage in self.face_decoder_blocks:
            # U-Net: each decoder stage's output is joined with the encoder features of equal size,
            # deepest first.
            x = torch.cat((stage(x), skips.pop()), dim=1)
        return self.output_block(x)


# --------------------------------------------------------------------------------------------------
# Checkpoints.


def read_torch_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """Read a ``.pth``/``.pt`` file into a plain state dict with ``module.`` prefixes removed."""
    hint = not_weights_hint(path)
    if hint:
        raise ModelLoadError(f"cannot read torch checkpoint {path}{hint}", path=str(path))
    try:
        # The public checkpoints hold only tensors, ints and None in a dict, which the safe
        # (weights_only) unpickler accepts; arbitrary pickles are refused rather than executed.
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        if "weights only load failed" not in text.lower():
            raise ModelLoadError(f"cannot read torch checkpoint {path}: {text or type(exc).__name__}", path=str(path)) from exc
        detail = next((ln.strip() for ln in text.splitlines() if "WeightsUnpickler error" in ln), "")
        raise ModelLoadError(
            f"refused to load {path}: it holds objects other than tensors, which are not unpickled for "
            f"safety ({detail or 'weights_only load failed'})",
            path=str(path),
        ) from exc
    except Exception as exc:  # corrupt / truncated / not a torch file
        raise ModelLoadError(f"cannot read torch checkpoint {path}: {type(exc).__name__}: {exc}", path=str(path)) from exc
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ModelLoadError(
            f"{path} is not a Wav2Lip checkpoint: expected a dict of tensors or a dict with a 'state_dict' "
            f"of tensors, got {type(obj).__name__}",
            path=str(path),
        )
    state: dict[str, torch.Tensor] = {}
    for key, value in obj.items():
        while key.startswith("module."):  # DataParallel (possibly nested)
            key = key[len("module.") :]
        state[key] = value
    return state


def _few(items, n: int = 5) -> str:
    items = sorted(items)
    more = f" (+{len(items) - n} more)" if len(items) > n else ""
    return ", ".join(items[:n]) + more


def model_from_state(state: dict[str, torch.Tensor], path: Path) -> Wav2Lip:
    model = Wav2Lip()
    expected = model.state_dict()
    # BatchNorm's num_batches_tracked is unused at inference; checkpoints from very old torch lack it.
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key(s): {_few(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s): {_few(unexpected)}")
        raise ModelLoadError(
            f"{path} does not match the Wav2Lip generator layout: " + "; ".join(parts), path=str(path)
        )
    wrong = [
        f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    if wrong:
        raise ModelLoadError(
            f"{path} has {len(wrong)} tensor(s) with the wrong shape (checkpoint != expected): {_few(wrong, 3)}",
            path=str(path),
        )
    full = dict(expected)
    full.update(state)
    try:
        model.load_state_dict(full, strict=True)
    except RuntimeError as exc:  # pragma: no cover - the checks above should catch everything
        raise ModelLoadError(f"{path}: load_state_dict failed: {exc}", path=str(path)) from exc
    return model.eval()


def build_wav2lip_from_checkpoint(path: str | os.PathLike) -> Wav2Lip:
    """Load a ``.pth``/``.pt`` checkpoint into a float32 CPU :class:`Wav2Lip` in eval mode."""
    p = check_model_path(path, TORCH_SUFFIXES)
    return model_from_state(read_torch_checkpoint(p), p)


def save_random_checkpoint(path: str | os.PathLike, seed: int = 0) -> Path:
    """Write a random-init generator in the public checkpoint format (``module.`` prefixed keys).

    BatchNorm running statistics are randomised too (mildly), so eval-mode outputs are not trivial.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Wav2Lip()
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.running_mean.copy_(torch.randn(mod.running_mean.shape, generator=gen) * 0.1)
                mod.running_var.copy_(torch.rand(mod.running_var.shape, generator=gen) * 0.5 + 0.75)
    state = {f"module.{k}": v for k, v in model.state_dict().items()}
    ckpt = {"state_dict": state, "global_step": 0, "global_epoch": 0, "optimizer": None}
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, lambda tmp: torch.save(ckpt, tmp))
    return out
