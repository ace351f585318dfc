"""Write a random-init MuseTalk 1.5 models directory in the public layout (tests and benchmarks).

``write_random_models(dir, reduced=False)`` writes::

    musetalkV15/musetalk.json, musetalkV15/unet.pth        plain UNet state dict
    sd-vae/config.json, sd-vae/diffusion_pytorch_model.bin  old attention names (query/key/value/proj_attn)
    whisper/config.json, whisper/pytorch_model.bin          WhisperForConditionalGeneration keys
    whisper/preprocessor_config.json

``reduced=False`` uses the public configs (UNet ~850 M parameters, 3.4 GB); ``reduced=True`` keeps
every structural choice (block types, 8->4 latent channels, 8x VAE downsampling, 4 whisper layers,
1500 positions, 30 s pieces) but shrinks the widths so CPU tests run in seconds. Tensors are drawn
from a seeded generator (fan-in scaled normals, norm weights 1), so a directory is reproducible;
no network is created with real initialisation, which keeps writing the full-size one fast.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import torch

from actors.models.musetalk import files
from actors.models.musetalk.unet import build_unet
from actors.models.musetalk.vae import build_vae, to_legacy_attention_names

UNET_CONFIG_V15 = {
    "_class_name": "UNet2DConditionModel",
    "_diffusers_version": "0.6.0",
    "act_fn": "silu",
    "attention_head_dim": 8,
    "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False,
    "cross_attention_dim": 384,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 8,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "out_channels": 4,
    "sample_size": 64,
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
}

VAE_CONFIG_FT_MSE = {
    "_class_name": "AutoencoderKL",
    "_diffusers_version": "0.4.2",
    "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "in_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "out_channels": 3,
    "sample_size": 256,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
}

WHISPER_TINY_CONFIG = {
    "_name_or_path": "openai/whisper-tiny",
    "architectures": ["WhisperForConditionalGeneration"],
    "model_type": "whisper",
    "activation_function": "gelu",
    "d_model": 384,
    "encoder_layers": 4,
    "encoder_attention_heads": 6,
    "encoder_ffn_dim": 1536,
    "decoder_layers": 4,
    "decoder_attention_heads": 6,
    "decoder_ffn_dim": 1536,
    "num_mel_bins": 80,
    "max_source_positions": 1500,
    "max_target_positions": 448,
    "vocab_size": 51865,
    "pad_token_id": 50257,
    "bos_token_id": 50257,
    "eos_token_id": 50257,
    "decoder_start_token_id": 50258,
    "scale_embedding": False,
    "is_encoder_decoder": True,
    "torch_dtype": "float32",
}

WHISPER_PREPROCESSOR_CONFIG = {
    "chunk_length": 30,
    "feature_extractor_type": "WhisperFeatureExtractor",
    "feature_size": 80,
    "hop_length": 160,
    "n_fft": 400,
    "n_samples": 480000,
    "nb_max_frames": 3000,
    "padding_side": "right",
    "padding_value": 0.0,
    "processor_class": "WhisperProcessor",
    "return_attention_mask": False,
    "sampling_rate": 16000,
}


def reduced_configs() -> tuple[dict, dict, dict]:
    """Small UNet / VAE / whisper configs with the public structure (see the module docstring)."""
    unet = copy.deepcopy(UNET_CONFIG_V15)
    unet.update(block_out_channels=[32, 32, 64, 64], layers_per_block=1, norm_num_groups=8,
                attention_head_dim=2, cross_attention_dim=32)
    vae = copy.deepcopy(VAE_CONFIG_FT_MSE)
    vae.update(block_out_channels=[8, 16, 16, 16], layers_per_block=1, norm_num_groups=4)
    whisper = copy.deepcopy(WHISPER_TINY_CONFIG)
    whisper.update(d_model=32, encoder_attention_heads=2, encoder_ffn_dim=64, decoder_layers=1,
                   decoder_attention_heads=2, decoder_ffn_dim=64, max_target_positions=16, vocab_size=51865)
    return unet, vae, whisper


def random_state(shapes: dict[str, torch.Size], seed: int) -> dict[str, torch.Tensor]:
    """Seeded random tensors: weights ~ N(0, 1/fan_in), 1-D norm weights 1, biases small."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for key in sorted(shapes):
        shape = tuple(shapes[key])
        if len(shape) >= 2:
            fan_in = max(1, int(torch.Size(shape[1:]).numel()))
            t = torch.randn(shape, generator=gen) * (fan_in ** -0.5)
        elif key.endswith("weight"):  # GroupNorm / LayerNorm scales
            t = torch.ones(shape)
        else:
            t = torch.randn(shape, generator=gen) * 0.02
        out[key] = t.contiguous()
    return out


def _shapes(module: torch.nn.Module) -> dict[str, torch.Size]:
    return {k: v.shape for k, v in module.state_dict().items()}


def _write_json(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8")


def _save(path: Path, state: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, str(path))


def write_random_models(models_dir: str | os.PathLike, reduced: bool = False, seed: int = 0) -> Path:
    """Write a complete random-init models directory (public layout) and return its path."""
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    root = Path(models_dir)
    if reduced:
        unet_cfg, vae_cfg, whisper_cfg = reduced_configs()
    else:
        unet_cfg, vae_cfg, whisper_cfg = UNET_CONFIG_V15, VAE_CONFIG_FT_MSE, WHISPER_TINY_CONFIG

    _write_json(root / files.UNET_CONFIG, unet_cfg)
    _save(root / files.UNET_WEIGHTS, random_state(_shapes(build_unet(unet_cfg)), seed))

    _write_json(root / files.VAE_CONFIG, vae_cfg)
    vae_state = random_state(_shapes(build_vae(vae_cfg)), seed + 1)
    _save(root / files.VAE_WEIGHTS, to_legacy_attention_names(vae_state))

    _write_json(root / files.WHISPER_CONFIG, whisper_cfg)
    _write_json(root / files.WHISPER_PREPROCESSOR, WHISPER_PREPROCESSOR_CONFIG)
    config = WhisperConfig.from_dict({k: v for k, v in whisper_cfg.items() if not k.startswith("_")})
    with torch.device("meta"):
        full = WhisperForConditionalGeneration(config)
    shapes = _shapes(full)
    shapes.pop("proj_out.weight", None)  # tied to the token embedding; not stored separately
    _save(root / files.WHISPER_WEIGHTS, random_state(shapes, seed + 2))
    return root
