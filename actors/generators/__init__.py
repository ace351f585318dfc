"""Lip-sync generators behind one small protocol (see ``base.Generator``)."""

from __future__ import annotations

from actors.errors import InvalidParameterError
from actors.models.wav2lip_spec import ENGINES  # what runs a Wav2Lip .onnx file

BACKENDS = ("default", "mouth_warp", "wav2lip", "musetalk")
PRECISIONS = ("auto", "fp32", "fp16", "bf16")


def canonical_backend(backend: str) -> str:
    """``mouth_warp`` is another name of ``default``."""
    return "default" if backend == "mouth_warp" else backend


def make_generator(backend: str = "default", checkpoint: str | None = None, device: str = "cpu",
                   batch_size: int = 32, precision: str = "auto", threads: int | None = None,
                   engine: str = "auto"):
    """Build the generator named by ``backend``.

    ``default`` is the weight-free mouth warp, so a fresh machine renders without any download.
    ``wav2lip`` loads a user-supplied checkpoint (.pth/.pt in torch; .onnx in OpenVINO on CPU when
    installed, else onnxruntime: ``engine``).
    ``musetalk`` loads a MuseTalk 1.5 models directory in the public layout (``musetalkV15/``,
    ``sd-vae/``, ``whisper/``; see ``actors/models/musetalk/files.py``) as ``checkpoint``.
    ``precision``: ``auto`` (fp16 on CUDA, fp32 on CPU), ``fp32``, ``fp16`` (MuseTalk) or ``bf16``
    (Wav2Lip ONNX on OpenVINO's CPU engine: an option, measured against fp32 in bench/bench_generator.py).
    ``threads``: CPU threads the forward pass may use (None: the runtime's default, every core);
    the service sizes it to the generator actor's ``num_cpus``.
    """
    if precision not in PRECISIONS:
        raise InvalidParameterError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    allowed = {"musetalk": ("auto", "fp32", "fp16"), "wav2lip": ("auto", "fp32", "bf16")}.get(backend, ("auto",))
    if precision not in allowed:
        raise InvalidParameterError(f"precision {precision!r} is not available for backend {backend!r}"
                                    f" (choose {', '.join(allowed)})")
    if engine not in ENGINES:
        raise InvalidParameterError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")
    if backend in ("default", "mouth_warp"):
        from actors.generators.mouth_warp import MouthWarpGenerator

        return MouthWarpGenerator()
    if backend == "wav2lip":
        if not checkpoint:
            raise InvalidParameterError("backend 'wav2lip' needs a checkpoint path (--checkpoint X.pth or X.onnx)")
        from actors.generators.wav2lip import Wav2LipGenerator

        return Wav2LipGenerator(checkpoint, device=device, batch_size=batch_size, threads=threads, engine=engine,
                                precision="fp32" if precision == "auto" else precision)
    if backend == "musetalk":
        if not checkpoint:
            raise InvalidParameterError("backend 'musetalk' needs its models directory (--checkpoint DIR with "
                                        "musetalkV15/, sd-vae/ and whisper/)")
        from actors.generators.musetalk import MuseTalkGenerator

        return MuseTalkGenerator(checkpoint, device=device, batch_size=batch_size,
                                 dtype=None if precision == "auto" else precision, threads=threads)
    raise InvalidParameterError(f"unknown generator backend {backend!r}; choose one of {', '.join(BACKENDS)}")
