"""The MuseTalk 1.5 models directory: where each file lives and how it is read.

Paths are relative to the models directory an operator configures (the public
``download_weights.sh`` layout). Errors name the file by this relative name only (e.g.
``sd-vae/config.json``), never by the server's absolute path.
"""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path
from typing import Any

import torch

from actors.errors import ModelLoadError
from actors.models.files import not_weights_hint

UNET_CONFIG = "musetalkV15/musetalk.json"
UNET_WEIGHTS = "musetalkV15/unet.pth"
VAE_CONFIG = "sd-vae/config.json"
VAE_WEIGHTS = "sd-vae/diffusion_pytorch_model.bin"
WHISPER_CONFIG = "whisper/config.json"
WHISPER_WEIGHTS = "whisper/pytorch_model.bin"
WHISPER_PREPROCESSOR = "whisper/preprocessor_config.json"
FACE_PARSING_WEIGHTS = "face-parse-bisent/79999_iter.pth"

REQUIRED_FILES = (UNET_CONFIG, UNET_WEIGHTS, VAE_CONFIG, VAE_WEIGHTS, WHISPER_CONFIG, WHISPER_WEIGHTS,
                  WHISPER_PREPROCESSOR)


def resolve(models_dir: str | os.PathLike, rel: str) -> Path:
    """``models_dir / rel``, or :class:`ModelLoadError` naming ``rel`` when it is not a file."""
    path = Path(models_dir) / rel
    if not path.is_file():
        what = "is a directory, not a file" if path.is_dir() else "is missing"
        raise ModelLoadError(f"MuseTalk model file {rel} {what} in the configured models directory", path=rel)
    return path


def read_json(models_dir: str | os.PathLike, rel: str) -> dict[str, Any]:
    path = resolve(models_dir, rel)
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"MuseTalk config {rel} is not readable JSON: {type(exc).__name__}: {exc}", path=rel) from None
    if not isinstance(obj, dict):
        raise ModelLoadError(f"MuseTalk config {rel} must hold a JSON object, got {type(obj).__name__}", path=rel)
    return obj


def public_kwargs(config: dict[str, Any]) -> dict[str, Any]:
    """A diffusers config without its bookkeeping keys (``_class_name``, ``_diffusers_version``...)."""
    return {k: v for k, v in config.items() if not k.startswith("_")}


def _torch_load(path: Path):
    try:
        # mmap: the 3.4 GB UNet is paged in from the file, not read into memory and then copied.
        return torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as exc:
        if "mmap" not in str(exc).lower() and "zip" not in str(exc).lower():
            raise
    # Files in torch's pre-1.6 (non-zip) format, like the 2019 face-parsing checkpoint, cannot be mapped.
    return torch.load(str(path), map_location="cpu", weights_only=True)


def read_state_dict(models_dir: str | os.PathLike, rel: str) -> dict[str, torch.Tensor]:
    """A plain ``{name: tensor}`` state dict from a torch pickle, read with the safe unpickler."""
    path = resolve(models_dir, rel)
    hint = not_weights_hint(path)
    if hint:
        raise ModelLoadError(f"cannot read MuseTalk weights {rel}{hint}", path=rel)
    try:
        obj = _torch_load(path)
    except pickle.UnpicklingError as exc:
        raise ModelLoadError(f"refused to load {rel}: it is not a plain tensor checkpoint "
                             f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})", path=rel) from None
    except Exception as exc:  # truncated / corrupt / not a torch file
        raise ModelLoadError(f"cannot read MuseTalk weights {rel}: {type(exc).__name__}: {exc}".replace(str(path), rel),
                             path=rel) from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ModelLoadError(f"{rel} is not a state dict: expected a non-empty dict of tensors, got "
                             f"{type(obj).__name__}", path=rel)
    return obj


def _few(items, n: int = 4) -> str:
    items = sorted(items)
    more = f" (+{len(items) - n} more)" if len(items) > n else ""
    return ", ".join(items[:n]) + more


def load_strict(model: torch.nn.Module, state: dict[str, torch.Tensor], rel: str, what: str) -> None:
    """Load ``state`` into ``model`` (built on the meta device) strictly, by assignment.

    Missing / unexpected keys and wrong shapes become one :class:`ModelLoadError` naming ``rel``.
    Assigning (rather than copying into initialised parameters) skips random init and keeps peak
    memory at one copy of the weights.
    """
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}" for k, v in expected.items()
             if k in state and tuple(state[k].shape) != tuple(v.shape)]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing key(s): {_few(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s): {_few(unexpected)}")
    if wrong:
        problems.append(f"{len(wrong)} tensor(s) of the wrong shape (file != config): {_few(wrong, 3)}")
    if problems:
        raise ModelLoadError(f"{rel} does not match the {what} built from its config: " + "; ".join(problems), path=rel)
    state = {k: (v.float() if v.is_floating_point() else v) for k, v in state.items()}
    model.load_state_dict(state, strict=True, assign=True)
    meta = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if meta:  # a buffer the checkpoint does not carry would stay uninitialised
        raise ModelLoadError(f"{rel}: {what} tensors left uninitialised: {_few(meta)}", path=rel)
