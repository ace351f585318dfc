"""MuseTalk 1.5 generator throughput: frames/s by batch size, per stage, and the GPU memory one
generator actor needs (what ``configs/gpu-musetalk.yaml``'s ``num_gpus`` is sized from).

    .venv/bin/python bench/bench_musetalk.py --models /models/musetalk --device cuda
    .venv/bin/python bench/bench_musetalk.py --random full --device cuda     # public shapes, random weights
    .venv/bin/python bench/bench_musetalk.py --random reduced                # smoke run on a CPU

Prints one row per batch size: the cached-latent path (UNet + VAE decode: what a job pays per
frame once the avatar's latents exist), the VAE encode (once per template frame), and the peak GPU
memory allocated by torch during that batch (plus the weights' footprint after loading). Random
weights cost the same time as real ones; no file is downloaded.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from actors.generators.musetalk import MuseTalkGenerator  # noqa: E402
from actors.models.musetalk.random_weights import write_random_models  # noqa: E402


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _gib(n: int) -> float:
    return n / 2**30


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench_musetalk.py")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--models", help="a MuseTalk models directory in the public layout")
    src.add_argument("--random", choices=["full", "reduced"], help="write random weights of this size first")
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "fp16"])
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4, 8, 16, 32, 64])
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args(argv)

    tmp = tempfile.TemporaryDirectory(prefix="bench-musetalk-")
    models = a.models or str(write_random_models(Path(tmp.name) / "models", reduced=a.random == "reduced"))
    cuda = a.device.startswith("cuda")
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    gen = MuseTalkGenerator(models, device=a.device, batch_size=max(a.batch_sizes),
                            dtype=None if a.precision == "auto" else a.precision)
    load_s = time.perf_counter() - t0
    weights = _gib(torch.cuda.memory_allocated()) if cuda else float("nan")
    print(f"MuseTalk on {gen.device} {str(gen.dtype).replace('torch.', '')}: load {load_s:.1f} s, "
          f"weights on the GPU {weights:.2f} GiB")

    rng = np.random.default_rng(0)
    feats = gen.prepare_audio((rng.standard_normal(16000 * 4) * 0.1).astype(np.float32), Fraction(25), 100)
    print(f"{'batch':>5} {'UNet+decode fr/s':>17} {'VAE encode fr/s':>16} {'peak GPU GiB':>13}")
    for b in a.batch_sizes:
        gen.batch_size = b
        faces = rng.integers(0, 256, (b, 256, 256, 3), dtype=np.uint8)
        feat = np.resize(feats, (b, *feats.shape[1:]))
        latents = gen.encode_faces(faces)
        gen.generate_from_latents(latents, feat)  # warm (cuDNN autotune, allocator)
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        _sync(a.device)
        t0 = time.perf_counter()
        for _ in range(a.repeats):
            gen.generate_from_latents(latents, feat)
        _sync(a.device)
        gen_fps = b * a.repeats / (time.perf_counter() - t0)
        t0 = time.perf_counter()
        for _ in range(a.repeats):
            gen.encode_faces(faces)
        _sync(a.device)
        enc_fps = b * a.repeats / (time.perf_counter() - t0)
        peak = _gib(torch.cuda.max_memory_allocated()) if cuda else float("nan")
        print(f"{b:>5} {gen_fps:>17.1f} {enc_fps:>16.1f} {peak:>13.2f}")
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
