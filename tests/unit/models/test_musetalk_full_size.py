"""The real MuseTalk 1.5 configs: random weights in the public layout load strictly (key for key,
shape for shape) and one frame runs end to end on CPU with the right shapes."""

from __future__ import annotations

import resource
import time
from fractions import Fraction

import numpy as np
import pytest

from actors.models.musetalk import files
from actors.models.musetalk.random_weights import write_random_models


@pytest.fixture(scope="module")
def full_dir(tmp_path_factory):
    return write_random_models(tmp_path_factory.mktemp("musetalk_v15"), reduced=False)


def test_public_configs_load_and_run_one_frame(full_dir, capsys):
    from actors.generators.musetalk import MuseTalkGenerator

    unet_bytes = (full_dir / files.UNET_WEIGHTS).stat().st_size
    assert unet_bytes > 3.3e9  # ~850 M fp32 parameters, like the public unet.pth
    t0 = time.perf_counter()
    gen = MuseTalkGenerator(full_dir, device="cpu", batch_size=1)
    t_load = time.perf_counter() - t0
    n_params = sum(p.numel() for p in gen.models.unet.parameters())
    assert 840e6 < n_params < 860e6
    assert gen.models.unet.config.cross_attention_dim == 384 and gen.feature_shape == (50, 384)

    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    feats = gen.prepare_audio((rng.standard_normal(16000) * 0.1).astype(np.float32), Fraction(25), 25)
    t_audio = time.perf_counter() - t0
    assert feats.shape == (25, 50, 384) and feats.dtype == np.float32

    face = rng.integers(0, 256, (1, 256, 256, 3), dtype=np.uint8)
    t0 = time.perf_counter()
    latents = gen.encode_faces(face)
    out = gen.generate_from_latents(latents, feats[:1])
    t_frame = time.perf_counter() - t0
    assert latents.shape == (1, 8, 32, 32) and np.isfinite(latents).all()
    assert out.shape == (1, 256, 256, 3) and out.dtype == np.uint8

    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    with capsys.disabled():
        print(f"\nMuseTalk 1.5 full size (CPU fp32): load {t_load:.1f} s, whisper 1 s audio {t_audio:.1f} s, "
              f"one frame (VAE x2 + UNet + decode) {t_frame:.1f} s, peak RSS {peak_gib:.2f} GiB")
