"""What every model loader shares: the torch device to run on, and why a weights file is not one."""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger(__name__)


def resolve_torch_device(device: str | None, model: str) -> str:
    """"cpu", "cuda", "cuda:N" or "auto"; a CUDA request without a usable GPU runs on CPU (logged)."""
    import torch

    device = (device or "cpu").lower()
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        log.warning("device %r requested but CUDA is not available to torch; running %s on CPU", device, model)
        return "cpu"
    return device


def not_weights_hint(path: Path) -> str:
    """A human hint for the common files that are not weights (a saved web page, a Git LFS pointer)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(64).lstrip().lower()
    except OSError:
        return ""
    if head.startswith(b"<"):
        return " (the file is an HTML page: a failed or redirected download?)"
    if head.startswith(b"version https://git-lfs"):
        return " (the file is a Git LFS pointer, not the weights: run git lfs pull)"
    return ""
