"""Running Wav2Lip: ``load_wav2lip(path, device)`` returns a :class:`Wav2LipRunner`, a callable taking
**numpy float32** ``mel[B,1,80,16]`` and ``face[B,6,96,96]`` and returning **numpy float32**
``[B,3,h,w]``, whatever the backend (torch for ``.pth``/``.pt``, onnxruntime for ``.onnx``): the whole
96x96 crop, or only the runner's ``window`` of it (a mouth-window model, ``wav2lip_window.py``).
Torch tensors are accepted as inputs too (they are converted); the output is always numpy.

torch is imported only for a torch checkpoint or a CUDA request: the ONNX CPU path runs on
onnxruntime alone.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from actors.errors import ModelLoadError
from actors.models.files import resolve_torch_device
from actors.models.wav2lip_spec import (
    ENGINES, FACE_SHAPE, MEL_SHAPE, ONNX_SUFFIXES, WINDOW_METADATA_KEY, check_model_path, parse_window,
)

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------------
# Runners.


def _as_numpy(x: Any, name: str, shape: tuple[int, ...]) -> np.ndarray:
    if type(x).__module__.startswith("torch"):  # a torch.Tensor, without importing torch for numpy input
        x = x.detach().cpu().numpy()
    arr = np.ascontiguousarray(x, dtype=np.float32)
    if arr.ndim != 4 or arr.shape[1:] != shape:
        raise ValueError(f"{name} must have shape [B,{','.join(map(str, shape))}], got {arr.shape}")
    return arr


class Wav2LipRunner:
    """Callable ``(mel float32[B,1,80,16], face float32[B,6,96,96]) -> float32[B,3,h,w]`` (numpy).

    Attributes: ``backend`` ("torch" | "onnxruntime"), ``device`` ("cpu" | "cuda[:n]"),
    ``providers`` (onnxruntime execution providers in use; empty for torch), ``path``, ``window``
    (``(r0, r1, c0, c1)`` of the 96x96 crop that the output covers, or None for the whole crop).
    """

    backend: str = ""
    device: str = "cpu"
    providers: list[str]
    window: tuple[int, int, int, int] | None = None

    def __init__(self, path: Path):
        self.path = path
        self.providers = []

    @property
    def out_shape(self) -> tuple[int, int, int]:
        if self.window is None:
            return 3, 96, 96
        r0, r1, c0, c1 = self.window
        return 3, r1 - r0, c1 - c0

    def __call__(self, mel: Any, face: Any) -> np.ndarray:
        mel_np = _as_numpy(mel, "mel", MEL_SHAPE)
        face_np = _as_numpy(face, "face", FACE_SHAPE)
        if mel_np.shape[0] != face_np.shape[0]:
            raise ValueError(f"batch mismatch: mel has {mel_np.shape[0]} rows, face {face_np.shape[0]}")
        if mel_np.shape[0] == 0:
            return np.zeros((0, *self.out_shape), np.float32)
        return self._run(mel_np, face_np)

    def _run(self, mel: np.ndarray, face: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(path={str(self.path)!r}, backend={self.backend!r}, device={self.device!r})"


class TorchWav2LipRunner(Wav2LipRunner):
    backend = "torch"

    def __init__(self, path: Path, model, device: str, window: tuple[int, int, int, int] | None = None):
        super().__init__(path)
        self.device = device
        self.half = device.startswith("cuda")
        if window is not None:
            from actors.models.wav2lip_window import Wav2LipWindowed

            model = Wav2LipWindowed(model, window)
            self.window = model.window
        model = model.to(device)
        if self.half:  # fp16 on CUDA: ~2x throughput; BatchNorm folded-in eval stats are fine in half
            model = model.half()
        self.model = model.eval()

    def _run(self, mel: np.ndarray, face: np.ndarray) -> np.ndarray:
        import torch

        dtype = torch.float16 if self.half else torch.float32
        with torch.inference_mode():
            m = torch.from_numpy(mel).to(self.device, dtype=dtype, non_blocking=True)
            f = torch.from_numpy(face).to(self.device, dtype=dtype, non_blocking=True)
            out = self.model(m, f)
            return out.float().cpu().numpy()


class OpenVinoWav2LipRunner(Wav2LipRunner):
    backend = "openvino"

    def __init__(self, path: Path, threads: int | None, precision: str):
        from actors.models.wav2lip_openvino import OpenVinoSession

        super().__init__(path)
        self.session = OpenVinoSession(path, threads, precision)
        self.window = self.session.window
        self.precision = self.session.precision
        self.providers = ["OpenVINO CPU"]

    def _run(self, mel: np.ndarray, face: np.ndarray) -> np.ndarray:
        return self.session.run(mel, face)


class OnnxWav2LipRunner(Wav2LipRunner):
    backend = "onnxruntime"

    def __init__(self, path: Path, session: Any):
        super().__init__(path)
        self.session = session
        self.providers = list(session.get_providers())
        self.device = "cuda" if "CUDAExecutionProvider" in self.providers else "cpu"
        inputs = session.get_inputs()
        if len(inputs) != 2 or len(session.get_outputs()) != 1:
            raise ModelLoadError(
                f"{path} is not a Wav2Lip ONNX model: expected 2 inputs (mel, face) and 1 output, got "
                f"{len(inputs)} input(s) and {len(session.get_outputs())} output(s)",
                path=str(path),
            )
        by_name = {i.name: i for i in inputs}
        if "mel" in by_name and "face" in by_name:
            mel_in, face_in = by_name["mel"], by_name["face"]
        else:  # another exporter's names: tell them apart by the channel dimension (1 vs 6)
            mel_in, face_in = sorted(inputs, key=lambda i: i.shape[1] if isinstance(i.shape[1], int) else 99)
        self._mel_name, self._face_name = mel_in.name, face_in.name
        self._dtype = np.float16 if "float16" in mel_in.type else np.float32
        self._out_name = session.get_outputs()[0].name
        meta = session.get_modelmeta().custom_metadata_map or {}
        self.window = parse_window(meta.get(WINDOW_METADATA_KEY), path)

    def _run(self, mel: np.ndarray, face: np.ndarray) -> np.ndarray:
        feeds = {self._mel_name: mel.astype(self._dtype, copy=False), self._face_name: face.astype(self._dtype, copy=False)}
        (out,) = self.session.run([self._out_name], feeds)
        return np.asarray(out, dtype=np.float32)


def cpu_session_options(ort, threads: int | None, spin: bool = False):
    """onnxruntime options for a CPU-bound generator that shares its machine with a writer.

    * all graph optimisations (conv + batch-norm + activation fusion; measured ~3x the BASIC level on
      this network, see ``bench/bench_generator.py``);
    * ``threads`` intra-op threads (None: onnxruntime's default, one per physical core), sized by
      the caller to the CPUs the generator owns (the Ray actor's ``num_cpus``);
    * no spin-waiting between ops: a spinning pool burns the core the paste/encode thread needs,
      and measured no faster at batch >= 16;
    * sequential execution (no inter-op pool: this graph is a chain).
    """
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.inter_op_num_threads = 1
    if threads:
        opts.intra_op_num_threads = int(threads)
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    return opts


def _torch_sees_a_gpu() -> bool:
    import torch  # only asked on a CUDA request: the CPU path stays torch-free

    return bool(torch.cuda.is_available())


def _onnx_session(path: Path, device: str, threads: int | None = None):
    import onnxruntime as ort

    available = ort.get_available_providers()
    want_cuda = device.startswith("cuda") or device == "auto"
    want_cuda = want_cuda and "CUDAExecutionProvider" in available
    if want_cuda and not _torch_sees_a_gpu():
        # onnxruntime-gpu lists the CUDA EP even on machines without a GPU / driver.
        log.warning("CUDAExecutionProvider listed but no usable GPU; running %s on CPU", path)
        want_cuda = False
    opts = cpu_session_options(ort, threads)
    if want_cuda:
        cuda_opts: dict[str, Any] = {}
        if device.startswith("cuda:"):
            cuda_opts["device_id"] = int(device.split(":", 1)[1])
        try:
            sess = ort.InferenceSession(
                str(path), opts, providers=[("CUDAExecutionProvider", cuda_opts), "CPUExecutionProvider"]
            )
            if "CUDAExecutionProvider" not in sess.get_providers():
                log.warning("onnxruntime could not enable CUDA for %s; running on CPU", path)
            return sess
        except Exception as exc:  # a CUDA EP that fails to initialise: retry on CPU below
            log.warning("CUDA session for %s failed (%s: %s); falling back to CPU", path, type(exc).__name__, exc)
    try:
        return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise ModelLoadError(f"cannot load ONNX model {path}: {type(exc).__name__}: {exc}", path=str(path)) from exc


def _cpu_engine(engine: str, device: str, path: Path) -> str:
    """Which runtime runs an ONNX file: OpenVINO on CPU when installed (``auto``), else onnxruntime."""
    from actors.models.wav2lip_openvino import openvino_available

    if engine not in ENGINES:
        raise ModelLoadError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}", path=str(path))
    if device == "openvino":  # the older spelling of engine="openvino"
        return "openvino"
    if engine == "auto" and device == "auto" and not _torch_sees_a_gpu():
        device = "cpu"
    if engine == "auto":
        return "openvino" if device == "cpu" and openvino_available() else "onnxruntime"
    if engine == "openvino" and device != "cpu":
        raise ModelLoadError(f"engine 'openvino' runs on the CPU; device {device!r} needs engine 'onnxruntime'",
                             path=str(path))
    return engine


def load_wav2lip(path: str | os.PathLike, device: str = "cpu", threads: int | None = None,
                 window: tuple[int, int, int, int] | None = None, engine: str = "auto",
                 precision: str = "fp32") -> Wav2LipRunner:
    """Load a Wav2Lip generator for inference; see :class:`Wav2LipRunner` for the call convention.

    * ``.pth`` / ``.pt``: a public-format checkpoint (``{"state_dict": ...}``) or a raw state dict,
      ``module.`` prefixes stripped, loaded strictly; run by torch, in fp16 on CUDA.
    * ``.onnx``: run by onnxruntime, CUDA EP first when ``device`` is not "cpu" and a GPU is usable,
      else the CPU EP.

    ``device``: "cpu", "cuda", "cuda:N", "auto", or "openvino" (= ``engine="openvino"``). A CUDA
    request on a machine without a usable GPU logs a warning and runs on CPU. ``engine`` (``.onnx``):
    "auto" runs a CPU model on OpenVINO when the ``openvino`` package is installed, else on
    onnxruntime (CUDA always on onnxruntime). ``precision``: "fp32", or "bf16" on OpenVINO
    (``wav2lip_openvino.py``). ``threads``: CPU threads for the forward pass (onnxruntime intra-op threads, or
    ``torch.set_num_threads`` for a CPU torch model); None keeps the runtime's default (all cores).
    ``window``: compute only this part of the crop (torch; an ONNX file declares its own window,
    ``lipserve export-onnx``). Every failure to load raises :class:`ModelLoadError` naming the file.
    """
    p = check_model_path(path)
    device = (device or "cpu").lower()
    is_onnx = p.suffix.lower() in ONNX_SUFFIXES
    runs_on = _cpu_engine(engine, device, p) if is_onnx else "torch"
    if precision == "bf16" and runs_on != "openvino":
        raise ModelLoadError(f"precision 'bf16' needs an ONNX model on the OpenVINO CPU engine; {p.name} runs on "
                             f"{runs_on}", path=str(p))
    if is_onnx:
        if runs_on == "openvino":
            return OpenVinoWav2LipRunner(p, threads, precision)
        return OnnxWav2LipRunner(p, _onnx_session(p, device, threads))
    if device == "openvino":
        raise ModelLoadError(f"device 'openvino' runs ONNX models only; export {p.name} first (lipserve export-onnx)",
                             path=str(p))
    import torch

    from actors.models.wav2lip import model_from_state, read_torch_checkpoint

    model = model_from_state(read_torch_checkpoint(p), p)
    device = resolve_torch_device(device, "Wav2Lip")
    if threads and device == "cpu":
        torch.set_num_threads(int(threads))  # per process: the generator owns its actor's CPUs
    return TorchWav2LipRunner(p, model, device, window)
