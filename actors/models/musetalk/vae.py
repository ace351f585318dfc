"""The sd-vae-ft-mse autoencoder: diffusers ``AutoencoderKL`` from ``sd-vae/``, plus MuseTalk's
crop <-> latent conventions.

The public ``diffusion_pytorch_model.bin`` predates diffusers' attention refactor: its mid-block
attention uses ``query/key/value/proj_attn``. Those names are mapped to ``to_q/to_k/to_v/to_out.0``
here (diffusers' own ``from_pretrained`` conversion is not relied on: the model is built from its
config and the state dict assigned, so nothing can reach the hub).
"""

from __future__ import annotations

import os
import re

import numpy as np
import torch

from actors.errors import ModelLoadError
from actors.models.musetalk.files import VAE_CONFIG, VAE_WEIGHTS, load_strict, public_kwargs, read_json, read_state_dict

# No ``scaling_factor`` in the public config.json: Stable Diffusion's 0.18215 applies.
DEFAULT_SCALING_FACTOR = 0.18215
LATENT_DOWNSAMPLE = 8

_OLD_TO_NEW = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}
_NEW_TO_OLD = {v: k for k, v in _OLD_TO_NEW.items()}
_OLD_ATTN = re.compile(r"^(.*\.attentions\.\d+\.)(query|key|value|proj_attn)\.(weight|bias)$")
_NEW_ATTN = re.compile(r"^(.*\.attentions\.\d+\.)(to_q|to_k|to_v|to_out\.0)\.(weight|bias)$")


def rename_legacy_attention(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Old attention key names -> current diffusers names (other keys unchanged).

    Very old checkpoints stored these projections as 1x1 convolutions (``[C, C, 1, 1]``); they are
    squeezed to the ``[C, C]`` of the linear layers.
    """
    out = {}
    for key, value in state.items():
        m = _OLD_ATTN.match(key)
        if m:
            key = f"{m.group(1)}{_OLD_TO_NEW[m.group(2)]}.{m.group(3)}"
            if value.ndim == 4 and value.shape[2:] == (1, 1):
                value = value[:, :, 0, 0]
        out[key] = value
    return out


def to_legacy_attention_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The inverse of :func:`rename_legacy_attention` (used to write files in the public layout)."""
    out = {}
    for key, value in state.items():
        m = _NEW_ATTN.match(key)
        out[f"{m.group(1)}{_NEW_TO_OLD[m.group(2)]}.{m.group(3)}" if m else key] = value
    return out


def build_vae(config: dict, rel: str = VAE_CONFIG, device: str | torch.device = "meta"):
    from diffusers import AutoencoderKL

    try:
        with torch.device(device):
            vae = AutoencoderKL(**public_kwargs(config))
    except (TypeError, ValueError, AssertionError) as exc:
        raise ModelLoadError(f"{rel} is not a usable AutoencoderKL config: {exc}", path=rel) from None
    n_down = len(vae.config.block_out_channels) - 1
    if 2**n_down != LATENT_DOWNSAMPLE or vae.config.latent_channels != 4 or vae.config.in_channels != 3:
        raise ModelLoadError(f"{rel} describes a VAE with {2**n_down}x downsampling and "
                             f"{vae.config.latent_channels} latent channels; MuseTalk needs 8x and 4", path=rel)
    return vae


def load_vae(models_dir: str | os.PathLike):
    """The VAE with its (old-layout) weights loaded strictly, fp32 on CPU, in eval mode."""
    config = read_json(models_dir, VAE_CONFIG)
    vae = build_vae(config)
    state = rename_legacy_attention(read_state_dict(models_dir, VAE_WEIGHTS))
    load_strict(vae, state, VAE_WEIGHTS, "sd-vae AutoencoderKL")
    return vae.eval().requires_grad_(False)


def scaling_factor(vae) -> float:
    value = getattr(vae.config, "scaling_factor", None)
    return float(value) if value else DEFAULT_SCALING_FACTOR


def crops_to_vae_input(crops: np.ndarray, mask_lower_half: bool) -> torch.Tensor:
    """``uint8[B,S,S,3]`` BGR -> ``float32[B,3,S,S]`` RGB in [-1, 1].

    With ``mask_lower_half`` rows ``S//2..`` are zeroed *before* normalising (so they become -1),
    as MuseTalk's ``preprocess_img(half_mask=True)`` does.
    """
    x = torch.from_numpy(np.ascontiguousarray(crops[..., ::-1])).permute(0, 3, 1, 2).float() / 255.0
    if mask_lower_half:
        x[:, :, x.shape[2] // 2 :, :] = 0.0
    return (x - 0.5) / 0.5


@torch.inference_mode()
def encode_mean(vae, x: torch.Tensor) -> torch.Tensor:
    """Scaled posterior *mean* latents ``[B,4,S/8,S/8]``.

    MuseTalk samples the posterior (``latent_dist.sample()``, global RNG), which makes its output
    vary run to run; the mean is the deterministic centre of that distribution.
    """
    dist = vae.encode(x.to(device=vae.device, dtype=vae.dtype)).latent_dist
    return dist.mean * scaling_factor(vae)


@torch.inference_mode()
def decode_to_crops(vae, latents: torch.Tensor) -> np.ndarray:
    """Scaled latents ``[B,4,h,w]`` -> ``uint8[B,8h,8w,3]`` BGR (clamped, rounded)."""
    image = vae.decode(latents.to(device=vae.device, dtype=vae.dtype) / scaling_factor(vae)).sample
    image = (image.float() / 2 + 0.5).clamp(0, 1)
    image = (image.permute(0, 2, 3, 1) * 255.0).round().to(torch.uint8).cpu().numpy()
    return np.ascontiguousarray(image[..., ::-1])
