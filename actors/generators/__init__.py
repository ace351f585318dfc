"""Lip-sync generators behind one small protocol (see ``base.Generator``)."""

from __future__ import annotations

from actors.errors import InvalidParameterError

BACKENDS = ("default", "mouth_warp", "wav2lip")


def make_generator(backend: str = "default", checkpoint: str | None = None, device: str = "cpu",
                   batch_size: int = 32, threads: int | None = None):
    """Build the generator named by ``backend``.

    ``default`` is the weight-free mouth warp, so a fresh machine renders without any download.
    ``wav2lip`` loads a user-supplied checkpoint (.pth/.pt in torch, .onnx in onnxruntime).
    ``threads``: CPU threads the forward pass may use (None: the runtime's default, every core);
    the service sizes it to the generator actor's ``num_cpus``.
    """
    if backend in ("default", "mouth_warp"):
        from actors.generators.mouth_warp import MouthWarpGenerator

        return MouthWarpGenerator()
    if backend == "wav2lip":
        if not checkpoint:
            raise InvalidParameterError("backend 'wav2lip' needs a checkpoint path (--checkpoint X.pth or X.onnx)")
        from actors.generators.wav2lip import Wav2LipGenerator

        return Wav2LipGenerator(checkpoint, device=device, batch_size=batch_size, threads=threads)
    raise InvalidParameterError(f"unknown generator backend {backend!r}; choose one of {', '.join(BACKENDS)}")
