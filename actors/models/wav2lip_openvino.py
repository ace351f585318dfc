"""Running a Wav2Lip ONNX file with OpenVINO's CPU runtime (the ``openvino`` package from PyPI).

On x86 CPUs OpenVINO's CPU plugin runs this network about 1.3x faster than onnxruntime's default
CPU provider at fp32, with the same results to float rounding (bench/bench_generator.py), so it is
the default CPU engine when the package is installed. ``precision="bf16"`` asks for bfloat16
inference (AMX / AVX-512 BF16 CPUs; several times faster again, a measured PSNR against fp32, an
option only). The plugin falls back to fp32 on CPUs without bf16: :attr:`precision` reports what
was compiled.

The model keeps its dynamic batch axis (one compile serves every chunk size); threads are sized by
the caller to the CPUs the generator owns, without pinning, because the writer shares those cores
in ``lipserve render``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from actors.errors import ModelLoadError
from actors.models.wav2lip_spec import WINDOW_METADATA_KEY, parse_window

OV_PRECISIONS = {"fp32": "f32", "bf16": "bf16"}


def openvino_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("openvino") is not None


def _window_of(model, path: Path):
    try:
        value = model.get_rt_info(["framework", WINDOW_METADATA_KEY]).astype(str)
    except Exception:  # no such metadata: a whole-crop export
        return None
    return parse_window(value, path)


class OpenVinoSession:
    """``run(mel, face) -> float32 out`` over a compiled OpenVINO model; ``window`` from its metadata."""

    def __init__(self, path: Path, threads: int | None, precision: str = "fp32"):
        if precision not in OV_PRECISIONS:
            raise ModelLoadError(f"OpenVINO precision must be one of {', '.join(OV_PRECISIONS)}, got {precision!r}",
                                 path=str(path))
        try:
            import openvino as ov
        except ImportError as exc:
            raise ModelLoadError("engine 'openvino' needs the openvino package (pip install openvino)",
                                 path=str(path)) from exc
        config = {"INFERENCE_PRECISION_HINT": OV_PRECISIONS[precision], "PERFORMANCE_HINT": "LATENCY",
                  "NUM_STREAMS": "1", "ENABLE_CPU_PINNING": "NO"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = str(int(threads))
        try:
            core = ov.Core()
            model = core.read_model(str(path))
            names = [p.get_any_name() for p in model.inputs]
            if len(names) != 2 or len(model.outputs) != 1:
                raise ModelLoadError(
                    f"{path} is not a Wav2Lip ONNX model: expected 2 inputs (mel, face) and 1 output, got "
                    f"{len(names)} input(s) and {len(model.outputs)} output(s)", path=str(path))
            self.window = _window_of(model, path)
            self._compiled = core.compile_model(model, "CPU", config)
        except ModelLoadError:
            raise
        except Exception as exc:
            raise ModelLoadError(f"cannot load ONNX model {path} with OpenVINO: {type(exc).__name__}: {exc}",
                                 path=str(path)) from exc
        if "mel" in names and "face" in names:
            self._mel, self._face = "mel", "face"
        else:  # another exporter's names: tell them apart by the channel dimension (1 vs 6)
            by_channels = sorted(model.inputs, key=lambda p: p.get_partial_shape()[1].get_length())
            self._mel, self._face = (p.get_any_name() for p in by_channels)
        self._request = self._compiled.create_infer_request()
        compiled_as = str(self._compiled.get_property("INFERENCE_PRECISION_HINT")).lower()
        self.precision = "bf16" if "bf16" in compiled_as or "bfloat16" in compiled_as else "fp32"

    def run(self, mel: np.ndarray, face: np.ndarray) -> np.ndarray:
        # One request, used by one thread at a time (the generator runs one batch at a time).
        result = self._request.infer({self._mel: mel, self._face: face})
        return np.array(result[self._compiled.outputs[0]], dtype=np.float32, copy=True)
