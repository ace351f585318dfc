"""The whisper-tiny audio encoder MuseTalk conditions on, loaded from ``whisper/``.

Only the encoder is built (the decoder is never used): ``config.json`` -> ``WhisperConfig``,
``pytorch_model.bin`` (a ``WhisperForConditionalGeneration`` checkpoint) -> its ``model.encoder.*``
tensors, loaded strictly; ``preprocessor_config.json`` -> ``WhisperFeatureExtractor``. Nothing is
fetched from the hub.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch

from actors.errors import ModelLoadError
from actors.models.musetalk.files import (WHISPER_CONFIG, WHISPER_PREPROCESSOR, WHISPER_WEIGHTS, load_strict,
                                          read_json, read_state_dict)

SAMPLE_RATE = 16000
PIECE_SECONDS = 30
PIECE_SAMPLES = PIECE_SECONDS * SAMPLE_RATE  # 480000: whisper's fixed input length
STEPS_PER_SECOND = 50  # encoder output rate: 100 mel frames/s, halved by conv2's stride
ENCODER_PREFIXES = ("model.encoder.", "encoder.")
# Constructor arguments of WhisperFeatureExtractor taken from preprocessor_config.json (its stored
# ``mel_filters`` are recomputed from these).
_EXTRACTOR_KEYS = ("feature_size", "sampling_rate", "hop_length", "chunk_length", "n_fft", "padding_value")


@dataclass
class WhisperAudioEncoder:
    """The whisper encoder plus its feature extractor; :meth:`hidden_states` is MuseTalk's audio path."""

    encoder: torch.nn.Module
    extractor: object
    d_model: int
    n_layers: int

    @property
    def tokens_per_step(self) -> int:  # embedding output + one per layer
        return self.n_layers + 1

    @torch.inference_mode()
    def hidden_states(self, samples_16k: np.ndarray) -> np.ndarray:
        """Mono 16 kHz float samples -> ``float32[steps, n_layers+1, d_model]`` at 50 steps/s.

        The track is cut into 30 s pieces from t=0; each piece is padded with silence to 30 s by
        the feature extractor and encoded on its own, exactly as MuseTalk does, so a feature
        depends on its whole piece (callers must encode whole tracks, not windows). All the
        encoder's hidden states (conv + position embedding, each layer, the last after the final
        LayerNorm) are stacked per step. Steps of every piece are returned, including the
        padded tail of the last one; the caller trims.
        """
        samples = np.asarray(samples_16k, dtype=np.float32).reshape(-1)
        p = next(self.encoder.parameters())
        out = []
        for lo in range(0, max(len(samples), 1), PIECE_SAMPLES):
            piece = samples[lo : lo + PIECE_SAMPLES]
            feats = self.extractor(piece, sampling_rate=SAMPLE_RATE, return_tensors="np").input_features
            x = torch.from_numpy(np.ascontiguousarray(feats)).to(device=p.device, dtype=p.dtype)
            states = self.encoder(x, output_hidden_states=True).hidden_states
            out.append(torch.stack(states, dim=2)[0].float().cpu().numpy())  # [1500, L+1, d]
        return np.concatenate(out, axis=0)


def _encoder_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The encoder's tensors with their prefix removed (decoder and head tensors are skipped)."""
    for prefix in ENCODER_PREFIXES:
        sub = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if sub:
            return sub
    return {}


def load_whisper(models_dir: str | os.PathLike) -> WhisperAudioEncoder:
    from transformers import WhisperConfig, WhisperFeatureExtractor
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    raw = read_json(models_dir, WHISPER_CONFIG)
    if raw.get("model_type", "whisper") != "whisper":
        raise ModelLoadError(f"{WHISPER_CONFIG} is a {raw.get('model_type')!r} config, not whisper", path=WHISPER_CONFIG)
    try:
        config = WhisperConfig.from_dict(raw)
    except (TypeError, ValueError) as exc:
        raise ModelLoadError(f"{WHISPER_CONFIG} is not a usable WhisperConfig: {exc}", path=WHISPER_CONFIG) from None

    pre = read_json(models_dir, WHISPER_PREPROCESSOR)
    kwargs = {k: pre[k] for k in _EXTRACTOR_KEYS if k in pre}
    try:
        extractor = WhisperFeatureExtractor(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ModelLoadError(f"{WHISPER_PREPROCESSOR} is not a usable feature extractor config: {exc}",
                             path=WHISPER_PREPROCESSOR) from None
    n_frames = int(extractor.n_samples) // int(extractor.hop_length)
    if (int(extractor.sampling_rate) != SAMPLE_RATE or int(extractor.n_samples) != PIECE_SAMPLES
            or extractor.feature_size != config.num_mel_bins or n_frames != 2 * config.max_source_positions):
        raise ModelLoadError(
            f"{WHISPER_PREPROCESSOR} ({extractor.feature_size} mels, {extractor.sampling_rate} Hz, "
            f"{extractor.n_samples} samples) does not fit {WHISPER_CONFIG} ({config.num_mel_bins} mels, "
            f"{config.max_source_positions} positions); MuseTalk needs 16 kHz, 30 s pieces",
            path=WHISPER_PREPROCESSOR)

    with torch.device("meta"):
        encoder = WhisperEncoder(config)
    state = _encoder_state(read_state_dict(models_dir, WHISPER_WEIGHTS))
    if not state:
        raise ModelLoadError(f"{WHISPER_WEIGHTS} holds no whisper encoder tensors (no keys starting with "
                             f"'model.encoder.')", path=WHISPER_WEIGHTS)
    load_strict(encoder, state, WHISPER_WEIGHTS, "whisper encoder")
    return WhisperAudioEncoder(encoder.eval().requires_grad_(False), extractor, int(config.d_model),
                               int(config.encoder_layers))
