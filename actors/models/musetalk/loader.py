"""Load the three MuseTalk 1.5 networks from a models directory onto one device and dtype."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from actors.errors import InvalidParameterError, ModelLoadError
from actors.models.files import resolve_torch_device
from actors.models.musetalk.audio_windows import WINDOW_STEPS
from actors.models.musetalk.files import REQUIRED_FILES, resolve
from actors.models.musetalk.unet import load_unet, sinusoid_position_encoding
from actors.models.musetalk.vae import load_vae
from actors.models.musetalk.whisper import WhisperAudioEncoder, load_whisper

log = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
           "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


def resolve_device(device: str | None) -> str:
    return resolve_torch_device(device, "MuseTalk")


def resolve_dtype(dtype: str | torch.dtype | None, device: str) -> torch.dtype:
    """fp16 on CUDA (as MuseTalk's realtime path), fp32 on CPU, unless asked otherwise."""
    if dtype is None:
        return torch.float16 if device.startswith("cuda") else torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return _DTYPES[str(dtype).lower()]
    except KeyError:
        raise InvalidParameterError(f"MuseTalk dtype must be one of {sorted(_DTYPES)}, got {dtype!r}") from None


@dataclass
class MuseTalkModels:
    unet: torch.nn.Module
    vae: torch.nn.Module
    audio: WhisperAudioEncoder
    position_encoding: torch.Tensor  # [tokens, d_model] on the device, in the dtype
    device: str
    dtype: torch.dtype


def load_musetalk(models_dir: str | os.PathLike, device: str = "cpu",
                  dtype: str | torch.dtype | None = None) -> MuseTalkModels:
    """Everything MuseTalk 1.5 inference needs, strictly loaded; :class:`ModelLoadError` names the
    first missing or bad file (relative to ``models_dir``)."""
    if not Path(models_dir).is_dir():
        raise ModelLoadError("the MuseTalk models directory does not exist or is not a directory")
    for rel in REQUIRED_FILES:  # fail on a missing file before spending a minute on the others
        resolve(models_dir, rel)
    device = resolve_device(device)
    dtype = resolve_dtype(dtype, device)
    audio = load_whisper(models_dir)
    unet = load_unet(models_dir)
    if unet.config.cross_attention_dim != audio.d_model:
        raise ModelLoadError(f"musetalkV15/musetalk.json has cross_attention_dim {unet.config.cross_attention_dim} "
                             f"but the whisper encoder's d_model is {audio.d_model}", path="musetalkV15/musetalk.json")
    vae = load_vae(models_dir)
    # torch's own Module.to: diffusers' override only adds a warning about fp32-pinned modules,
    # which these two models do not have.
    unet = torch.nn.Module.to(unet, device=device, dtype=dtype)
    vae = torch.nn.Module.to(vae, device=device, dtype=dtype)
    audio.encoder = audio.encoder.to(device=device, dtype=dtype)  # whisper runs in the UNet's dtype
    pe = sinusoid_position_encoding(WINDOW_STEPS * audio.tokens_per_step, audio.d_model).to(device=device, dtype=dtype)
    return MuseTalkModels(unet=unet, vae=vae, audio=audio, position_encoding=pe, device=device, dtype=dtype)
