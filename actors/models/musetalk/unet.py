"""MuseTalk's UNet: diffusers ``UNet2DConditionModel`` built from ``musetalkV15/musetalk.json``.

The network is used as a single-step image-to-image mapper, not as a diffusion model: latents
``[B,8,32,32]`` (4 masked + 4 reference channels), timestep 0, and the audio tokens (whisper
features plus a fixed sinusoid position encoding) as cross-attention context -> ``[B,4,32,32]``.
"""

from __future__ import annotations

import math
import os

import torch

from actors.errors import ModelLoadError
from actors.models.musetalk.files import UNET_CONFIG, UNET_WEIGHTS, load_strict, public_kwargs, read_json, read_state_dict

LATENT_CHANNELS_IN = 8
LATENT_CHANNELS_OUT = 4


def build_unet(config: dict, rel: str = UNET_CONFIG, device: str | torch.device = "meta"):
    """The UNet described by a ``musetalk.json`` dict (keys starting with ``_`` ignored)."""
    from diffusers import UNet2DConditionModel

    kwargs = public_kwargs(config)
    try:
        with torch.device(device):
            unet = UNet2DConditionModel(**kwargs)
    except (TypeError, ValueError, AssertionError) as exc:
        raise ModelLoadError(f"{rel} is not a usable UNet2DConditionModel config: {exc}", path=rel) from None
    if unet.config.in_channels != LATENT_CHANNELS_IN or unet.config.out_channels != LATENT_CHANNELS_OUT:
        raise ModelLoadError(f"{rel} describes a UNet with {unet.config.in_channels} input / "
                             f"{unet.config.out_channels} output channels; MuseTalk needs 8 / 4", path=rel)
    return unet


def load_unet(models_dir: str | os.PathLike):
    """The MuseTalk 1.5 UNet with ``unet.pth`` loaded strictly, fp32 on CPU, in eval mode."""
    unet = build_unet(read_json(models_dir, UNET_CONFIG))
    load_strict(unet, read_state_dict(models_dir, UNET_WEIGHTS), UNET_WEIGHTS, "MuseTalk UNet")
    return unet.eval().requires_grad_(False)


def sinusoid_position_encoding(n_positions: int, d_model: int) -> torch.Tensor:
    """``float32[n_positions, d_model]``: pe[p, 2i] = sin(p / 10000^(2i/d)), pe[p, 2i+1] = cos(same).

    The same fixed table as MuseTalk's ``PositionalEncoding`` (computed there for 5000 positions;
    only the first 50, one per audio token, are ever used).
    """
    if d_model % 2:
        raise ValueError(f"position encoding needs an even d_model, got {d_model}")
    position = torch.arange(n_positions, dtype=torch.float32)[:, None]
    div_term = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32) * (-math.log(10000.0) / d_model))
    pe = torch.zeros(n_positions, d_model, dtype=torch.float32)
    pe[:, 0::2] = torch.sin(position * div_term)
    pe[:, 1::2] = torch.cos(position * div_term)
    return pe
