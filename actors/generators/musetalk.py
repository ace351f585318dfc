"""MuseTalk 1.5 as a :class:`~actors.generators.base.Generator` (256x256 crops, latent-space UNet).

Per frame: the crop with its lower half blanked and the unmasked crop are VAE-encoded (posterior
mean, so the output is deterministic) into ``[8,32,32]``; the UNet maps those plus the frame's
audio tokens to ``[4,32,32]``, which the VAE decodes to the new crop. The encoding only depends on
the template frame, so it can be cached per avatar: :meth:`MuseTalkGenerator.encode_faces` +
:meth:`MuseTalkGenerator.generate_from_latents` give exactly what :meth:`generate` gives.

The crop geometry the avatar code must use is in :mod:`actors.generators.musetalk_crop`.
"""

from __future__ import annotations

import hashlib
import os
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

from actors.crop_geometry import MuseTalkGeometry
from actors.errors import InvalidParameterError
from actors.generators.musetalk_crop import CROP_SIZE
from actors.models.musetalk.audio_windows import frame_windows
from actors.models.musetalk import files
from actors.models.musetalk.loader import load_musetalk
from actors.models.musetalk.vae import crops_to_vae_input, decode_to_crops, encode_mean

LATENT_SHAPE = (8, CROP_SIZE // 8, CROP_SIZE // 8)


class MuseTalkGenerator:
    """MuseTalk 1.5 over a models directory in the public layout (see ``actors.models.musetalk.files``).

    ``device``: "cpu", "cuda[:N]" or "auto"; ``dtype``: None (fp16 on CUDA, fp32 on CPU), "fp32",
    "fp16" or a torch dtype; ``threads``: torch CPU threads (None: every core). Runs in chunks of
    ``batch_size`` frames. The constructor raises
    ``ModelLoadError`` naming the bad file; wrongly shaped inputs raise ``InvalidParameterError``.
    """

    name = "musetalk"
    crop_size = CROP_SIZE
    crop_geometry = MuseTalkGeometry()

    def __init__(self, models_dir: str | os.PathLike, device: str = "cpu", batch_size: int = 8,
                 dtype: str | torch.dtype | None = None, threads: int | None = None):
        if int(batch_size) < 1:
            raise InvalidParameterError(f"musetalk batch_size must be >= 1, got {batch_size}")
        self.batch_size = int(batch_size)
        self.models = load_musetalk(models_dir, device=device, dtype=dtype)
        self.device = self.models.device
        self.dtype = self.models.dtype
        if threads and self.device == "cpu":
            torch.set_num_threads(int(threads))  # per process: the generator owns its actor's CPUs
        self.latent_key = _latent_key(models_dir, self.dtype)
        if (Path(models_dir) / files.FACE_PARSING_WEIGHTS).is_file():
            # BiSeNet parsing masks for the blend (jaw mode); loaded once here so a bad file fails
            # now, with its name, rather than in the first avatar build.
            from actors.models.bisenet import load_bisenet

            load_bisenet(models_dir)
            self.crop_geometry = MuseTalkGeometry(parsing_dir=str(Path(models_dir).resolve()))
        self.feature_shape = tuple(self.models.position_encoding.shape)  # (50, d_model)
        self._timestep = torch.zeros(1, dtype=torch.long, device=self.device)

    # -- audio ------------------------------------------------------------------------------------

    def prepare_audio(self, samples_16k: np.ndarray, fps: Fraction, n_frames: int) -> np.ndarray:
        """The whole track (mono float 16 kHz) -> ``float32[n_frames, 50, d_model]`` audio tokens
        (without the position encoding, which :meth:`generate` adds). Call once per job: each
        feature depends on its whole 30 s piece of the track."""
        samples = np.asarray(samples_16k, dtype=np.float32).reshape(-1)
        states = self.models.audio.hidden_states(samples)
        return frame_windows(states, len(samples), fps, n_frames)

    # -- faces ------------------------------------------------------------------------------------

    def _check_faces(self, faces: np.ndarray) -> np.ndarray:
        faces = np.asarray(faces)
        s = self.crop_size
        if faces.ndim != 4 or faces.shape[1:] != (s, s, 3) or faces.dtype != np.uint8:
            raise InvalidParameterError(f"musetalk expects faces uint8[B,{s},{s},3], got {faces.dtype} {faces.shape}")
        return faces

    def encode_faces(self, crops: np.ndarray) -> np.ndarray:
        """``uint8[B,256,256,3]`` BGR crops -> ``float32[B,8,32,32]`` reference latents (masked lower
        half in channels 0-3, the whole crop in 4-7). Cacheable per avatar frame."""
        crops = self._check_faces(crops)
        out = np.empty((len(crops), *LATENT_SHAPE), np.float32)
        vae = self.models.vae
        for lo in range(0, len(crops), self.batch_size):
            chunk = crops[lo : lo + self.batch_size]
            masked = encode_mean(vae, crops_to_vae_input(chunk, mask_lower_half=True))
            whole = encode_mean(vae, crops_to_vae_input(chunk, mask_lower_half=False))
            out[lo : lo + len(chunk)] = torch.cat([masked, whole], dim=1).float().cpu().numpy()
        return out

    # -- generation -------------------------------------------------------------------------------

    def _check_features(self, features: np.ndarray, n: int) -> np.ndarray:
        features = np.asarray(features)
        if features.ndim != 3 or tuple(features.shape[1:]) != self.feature_shape:
            raise InvalidParameterError(f"musetalk expects audio features float32[B,{self.feature_shape[0]},"
                                        f"{self.feature_shape[1]}] (from prepare_audio), got {features.shape}")
        if len(features) != n:
            raise InvalidParameterError(f"musetalk got {n} faces but {len(features)} audio features")
        return features

    @torch.inference_mode()
    def generate_from_latents(self, latents: np.ndarray, features: np.ndarray) -> np.ndarray:
        """Cached ``float32[B,8,32,32]`` latents + ``[B,50,d]`` audio tokens -> ``uint8[B,256,256,3]`` BGR."""
        latents = np.asarray(latents)
        if latents.ndim != 4 or latents.shape[1:] != LATENT_SHAPE:
            raise InvalidParameterError(f"musetalk expects latents float32[B,{','.join(map(str, LATENT_SHAPE))}] "
                                        f"(from encode_faces), got {latents.shape}")
        features = self._check_features(features, len(latents))
        s = self.crop_size
        out = np.empty((len(latents), s, s, 3), np.uint8)
        m = self.models
        for lo in range(0, len(latents), self.batch_size):
            hi = lo + self.batch_size
            lat = torch.from_numpy(np.ascontiguousarray(latents[lo:hi], dtype=np.float32)).to(self.device, self.dtype)
            audio = torch.from_numpy(np.ascontiguousarray(features[lo:hi], dtype=np.float32)).to(self.device, self.dtype)
            pred = m.unet(lat, self._timestep, encoder_hidden_states=audio + m.position_encoding).sample
            out[lo:hi] = decode_to_crops(m.vae, pred)
        return out

    def generate(self, faces: np.ndarray, features: np.ndarray) -> np.ndarray:
        """``uint8[B,256,256,3]`` BGR crops + ``[B,50,d]`` audio tokens -> ``uint8[B,256,256,3]`` BGR."""
        faces = self._check_faces(faces)
        self._check_features(features, len(faces))
        return self.generate_from_latents(self.encode_faces(faces), features)

    def __repr__(self) -> str:
        return f"MuseTalkGenerator(device={self.device!r}, dtype={str(self.dtype).replace('torch.', '')!r})"


def _latent_key(models_dir: str | os.PathLike, dtype: torch.dtype) -> str:
    """Names the reference latents this VAE makes: cached latents are reused only by the same VAE
    weights (size + mtime + config content) at the same precision."""
    h = hashlib.sha256()
    for rel in (files.VAE_CONFIG, files.VAE_WEIGHTS):
        path = files.resolve(models_dir, rel)
        st = path.stat()
        h.update(f"{rel}|{st.st_size}|{st.st_mtime_ns}|".encode())
    h.update(files.resolve(models_dir, files.VAE_CONFIG).read_bytes())
    h.update(str(dtype).encode())
    return h.hexdigest()[:16]
