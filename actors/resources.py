"""What a pipeline process uses: its memory, and the GPUs it runs on (NVML, when there is a driver).

Plain functions (no Ray): ``GeneratorActor.resources`` reports them, the job runner records them per
attempt and ``serve_app/metrics.py`` exports them.
"""

from __future__ import annotations

import resource
import sys


def peak_rss_bytes() -> int:
    """This process's peak resident set size (``ru_maxrss``: KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def cuda_peak_bytes(device) -> int | None:
    """Peak CUDA memory allocated by torch on ``device`` since the process started, or None off CUDA."""
    if "torch" not in sys.modules:  # a backend without torch (ONNX on CPU) never touched CUDA
        return None
    import torch

    dev = torch.device(device) if device is not None else None
    if dev is None or dev.type != "cuda" or not torch.cuda.is_available():
        return None
    return int(torch.cuda.max_memory_allocated(dev))


def generator_memory(device) -> tuple[int, str]:
    """(bytes, kind): peak CUDA memory on a GPU (``cuda_peak``), else the process's peak RSS (``rss``)."""
    cuda = cuda_peak_bytes(device)
    if cuda is not None:
        return cuda, "cuda_peak"
    return peak_rss_bytes(), "rss"


def gpu_stats(physical_ids: list[str]) -> list[dict]:
    """Utilisation (0..1) and memory of the given GPUs (NVML indices), [] without NVML or a driver."""
    if not physical_ids:
        return []
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:  # no library, no driver: nothing to report (a CPU node)
        return []
    stats = []
    try:
        for gpu in physical_ids:
            try:
                handle = pynvml.nvmlDeviceGetHandleByIndex(int(gpu))
                util = pynvml.nvmlDeviceGetUtilizationRates(handle)
                mem = pynvml.nvmlDeviceGetMemoryInfo(handle)
            except (pynvml.NVMLError, ValueError):
                continue
            stats.append({"gpu": str(gpu), "utilization": util.gpu / 100.0, "memory_used_bytes": int(mem.used),
                          "memory_total_bytes": int(mem.total)})
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:  # noqa: BLE001 - shutting down a library that half-initialised
            pass
    return stats
