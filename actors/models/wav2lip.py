"""The Wav2Lip generator network, its checkpoint / ONNX loaders and an ONNX exporter.

``Wav2Lip`` reproduces the public generator (Rudrabha/Wav2Lip, ``models/wav2lip.py`` +
``models/conv.py``) layer for layer, so the public ``wav2lip.pth`` / ``wav2lip_gan.pth`` checkpoints
load with ``strict=True``: same state-dict keys, same shapes (about 36.3 M parameters). The module
tree is built from compact layer tables below rather than written out by hand.

Only the 4-D inference form is supported: ``forward(mel[B,1,80,16], face[B,6,96,96]) -> [B,3,96,96]``
in [0, 1]. (The training code's 5-D ``(B, T, ...)`` form just folds T into B; callers do that
themselves.)

``load_wav2lip(path, device)`` returns a :class:`Wav2LipRunner`: a callable taking **numpy float32**
``mel[B,1,80,16]`` and ``face[B,6,96,96]`` and returning **numpy float32** ``[B,3,96,96]``, whatever
the backend (torch for ``.pth``/``.pt``, onnxruntime for ``.onnx``). Torch tensors are accepted as
inputs too (they are converted); the output is always numpy.

No weights are shipped: the public Wav2Lip weights are licensed for non-commercial use only, so the
project loads what a user supplies. :func:`save_random_checkpoint` writes a random-init checkpoint in
the public format for tests and benchmarks.
"""

from __future__ import annotations

import logging
import os
import pickle
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from actors.errors import ModelLoadError

log = logging.getLogger(__name__)

MEL_SHAPE = (1, 80, 16)
FACE_SHAPE = (6, 96, 96)
OUT_SHAPE = (3, 96, 96)
TORCH_SUFFIXES = (".pth", ".pt")
ONNX_SUFFIXES = (".onnx",)


# --------------------------------------------------------------------------------------------------
# Building blocks. Attribute names (``conv_block``, ``act``) are part of the checkpoint key layout.


class ConvBN(nn.Module):
    """Conv2d -> BatchNorm2d, optionally plus the block input (same shape), then ReLU."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: Any = 1, padding: int = 0, residual: bool = False):
        super().__init__()
        self.conv_block = nn.Sequential(nn.Conv2d(cin, cout, kernel, stride, padding), nn.BatchNorm2d(cout))
        self.act = nn.ReLU()
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv_block(x)
        if self.residual:
            y = y + x
        return self.act(y)


class UpConvBN(nn.Module):
    """ConvTranspose2d -> BatchNorm2d -> ReLU (the decoder's upsampling step)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, padding: int, output_padding: int = 0):
        super().__init__()
        self.conv_block = nn.Sequential(
            nn.ConvTranspose2d(cin, cout, kernel, stride, padding, output_padding), nn.BatchNorm2d(cout)
        )
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv_block(x))


def _down(cin: int, cout: int, kernel: int = 3, stride: Any = 1, padding: int = 1, n_res: int = 0) -> list[nn.Module]:
    """One plain conv block followed by ``n_res`` residual 3x3/stride-1 blocks at ``cout`` channels."""
    return [ConvBN(cin, cout, kernel, stride, padding)] + [
        ConvBN(cout, cout, 3, 1, 1, residual=True) for _ in range(n_res)
    ]


def _up(cin: int, cout: int, stride: int, padding: int, output_padding: int, n_res: int) -> list[nn.Module]:
    """One 3x3 transposed-conv block followed by ``n_res`` residual 3x3 blocks."""
    return [UpConvBN(cin, cout, 3, stride, padding, output_padding)] + [
        ConvBN(cout, cout, 3, 1, 1, residual=True) for _ in range(n_res)
    ]


# Face encoder: seven stages, 96x96 -> 1x1. Each entry: (cin, cout, kernel, stride, padding, n_res).
_FACE_ENCODER = [
    (6, 16, 7, 1, 3, 0),  # 96
    (16, 32, 3, 2, 1, 2),  # 48
    (32, 64, 3, 2, 1, 3),  # 24
    (64, 128, 3, 2, 1, 2),  # 12
    (128, 256, 3, 2, 1, 2),  # 6
    (256, 512, 3, 2, 1, 1),  # 3
]  # the last stage (3x3 valid conv then 1x1 conv, 512 ch) is added explicitly

# Audio encoder on the 80x16 mel patch -> 512x1x1, one flat Sequential. Same tuple layout.
_AUDIO_ENCODER = [
    (1, 32, 3, 1, 1, 2),  # 80x16
    (32, 64, 3, (3, 1), 1, 2),  # 27x16
    (64, 128, 3, 3, 1, 2),  # 9x6
    (128, 256, 3, (3, 2), 1, 1),  # 3x3
]  # followed by a 3x3 valid conv (256->512) and a 1x1 conv (512->512)

# Face decoder: stage 0 is a 1x1 conv on the audio embedding; the rest upsample. Each entry:
# (cin, cout, stride, padding, output_padding, n_res). cin counts the concatenated skip features.
_FACE_DECODER = [
    (1024, 512, 1, 0, 0, 1),  # 1 -> 3
    (1024, 512, 2, 1, 1, 2),  # 6
    (768, 384, 2, 1, 1, 2),  # 12
    (512, 256, 2, 1, 1, 2),  # 24
    (320, 128, 2, 1, 1, 2),  # 48
    (160, 64, 2, 1, 1, 2),  # 96
]


class Wav2Lip(nn.Module):
    """The public Wav2Lip generator (state-dict compatible). 4-D inference form only.

    ``forward(mel, face)``: ``mel`` float ``[B,1,80,16]``, ``face`` float ``[B,6,96,96]`` (channels 0-2
    the crop with its lower half zeroed, 3-5 the reference crop; BGR/255) -> ``[B,3,96,96]`` in [0, 1].
    """

    def __init__(self) -> None:
        super().__init__()
        face_stages = [nn.Sequential(*_down(*spec[:5], n_res=spec[5])) for spec in _FACE_ENCODER]
        face_stages.append(nn.Sequential(ConvBN(512, 512, 3, 1, 0), ConvBN(512, 512, 1, 1, 0)))
        self.face_encoder_blocks = nn.ModuleList(face_stages)

        audio_layers: list[nn.Module] = []
        for *conv, n_res in _AUDIO_ENCODER:
            audio_layers += _down(*conv, n_res=n_res)
        audio_layers += [ConvBN(256, 512, 3, 1, 0), ConvBN(512, 512, 1, 1, 0)]
        self.audio_encoder = nn.Sequential(*audio_layers)

        decoder = [nn.Sequential(ConvBN(512, 512, 1, 1, 0))]
        decoder += [nn.Sequential(*_up(*spec)) for spec in _FACE_DECODER]
        self.face_decoder_blocks = nn.ModuleList(decoder)

        self.output_block = nn.Sequential(ConvBN(80, 32, 3, 1, 1), nn.Conv2d(32, 3, 1, 1, 0), nn.Sigmoid())

    def forward(self, mel: torch.Tensor, face: torch.Tensor) -> torch.Tensor:
        if mel.dim() != 4 or face.dim() != 4:
            raise ValueError(
                f"Wav2Lip supports the 4-D inference form only: mel [B,1,80,16], face [B,6,96,96]; "
                f"got mel {tuple(mel.shape)}, face {tuple(face.shape)}"
            )
        skips = []
        x = face
        for stage in self.face_encoder_blocks:
            x = stage(x)
            skips.append(x)
        x = self.audio_encoder(mel)  # [B,512,1,1]
        for stage in self.face_decoder_blocks:
            # U-Net: each decoder stage's output is joined with the encoder features of equal size,
            # deepest first.
            x = torch.cat((stage(x), skips.pop()), dim=1)
        return self.output_block(x)


# --------------------------------------------------------------------------------------------------
# Checkpoints.


def _not_a_checkpoint_hint(path: Path) -> str:
    """A human hint for the common non-checkpoint files (a saved web page, a Git LFS pointer)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(64).lstrip().lower()
    except OSError:
        return ""
    if head.startswith((b"<!doctype", b"<html", b"<")):
        return " (the file is an HTML page: a failed or redirected download?)"
    if head.startswith(b"version https://git-lfs"):
        return " (the file is a Git LFS pointer, not the weights: run git lfs pull)"
    return ""


def _read_torch_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """Read a ``.pth``/``.pt`` file into a plain state dict with ``module.`` prefixes removed."""
    hint = _not_a_checkpoint_hint(path)
    if hint:
        raise ModelLoadError(f"cannot read torch checkpoint {path}{hint}", path=str(path))
    try:
        # The public checkpoints hold only tensors, ints and None in a dict, which the safe
        # (weights_only) unpickler accepts; arbitrary pickles are refused rather than executed.
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        if "weights only load failed" not in text.lower():
            raise ModelLoadError(f"cannot read torch checkpoint {path}: {text or type(exc).__name__}", path=str(path)) from exc
        detail = next((ln.strip() for ln in text.splitlines() if "WeightsUnpickler error" in ln), "")
        raise ModelLoadError(
            f"refused to load {path}: it holds objects other than tensors, which are not unpickled for "
            f"safety ({detail or 'weights_only load failed'})",
            path=str(path),
        ) from exc
    except Exception as exc:  # corrupt / truncated / not a torch file
        raise ModelLoadError(f"cannot read torch checkpoint {path}: {type(exc).__name__}: {exc}", path=str(path)) from exc
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ModelLoadError(
            f"{path} is not a Wav2Lip checkpoint: expected a dict of tensors or a dict with a 'state_dict' "
            f"of tensors, got {type(obj).__name__}",
            path=str(path),
        )
    state: dict[str, torch.Tensor] = {}
    for key, value in obj.items():
        while key.startswith("module."):  # DataParallel (possibly nested)
            key = key[len("module.") :]
        state[key] = value
    return state


def _few(items, n: int = 5) -> str:
    items = sorted(items)
    more = f" (+{len(items) - n} more)" if len(items) > n else ""
    return ", ".join(items[:n]) + more


def _model_from_state(state: dict[str, torch.Tensor], path: Path) -> Wav2Lip:
    model = Wav2Lip()
    expected = model.state_dict()
    # BatchNorm's num_batches_tracked is unused at inference; checkpoints from very old torch lack it.
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key(s): {_few(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s): {_few(unexpected)}")
        raise ModelLoadError(
            f"{path} does not match the Wav2Lip generator layout: " + "; ".join(parts), path=str(path)
        )
    wrong = [
        f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    if wrong:
        raise ModelLoadError(
            f"{path} has {len(wrong)} tensor(s) with the wrong shape (checkpoint != expected): {_few(wrong, 3)}",
            path=str(path),
        )
    full = dict(expected)
    full.update(state)
    try:
        model.load_state_dict(full, strict=True)
    except RuntimeError as exc:  # pragma: no cover - the checks above should catch everything
        raise ModelLoadError(f"{path}: load_state_dict failed: {exc}", path=str(path)) from exc
    return model.eval()


def build_wav2lip_from_checkpoint(path: str | os.PathLike) -> Wav2Lip:
    """Load a ``.pth``/``.pt`` checkpoint into a float32 CPU :class:`Wav2Lip` in eval mode."""
    p = _check_path(path, TORCH_SUFFIXES)
    return _model_from_state(_read_torch_checkpoint(p), p)


def save_random_checkpoint(path: str | os.PathLike, seed: int = 0) -> Path:
    """Write a random-init generator in the public checkpoint format (``module.`` prefixed keys).

    BatchNorm running statistics are randomised too (mildly), so eval-mode outputs are not trivial.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Wav2Lip()
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.running_mean.copy_(torch.randn(mod.running_mean.shape, generator=gen) * 0.1)
                mod.running_var.copy_(torch.rand(mod.running_var.shape, generator=gen) * 0.5 + 0.75)
    state = {f"module.{k}": v for k, v in model.state_dict().items()}
    ckpt = {"state_dict": state, "global_step": 0, "global_epoch": 0, "optimizer": None}
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write(out, lambda tmp: torch.save(ckpt, tmp))
    return out


# --------------------------------------------------------------------------------------------------
# Runners.


def _check_path(path: str | os.PathLike, suffixes: tuple[str, ...] | None = None) -> Path:
    p = Path(path)
    allowed = suffixes or (TORCH_SUFFIXES + ONNX_SUFFIXES)
    if p.suffix.lower() not in allowed:
        raise ModelLoadError(
            f"unknown model file type {p.suffix or '(no suffix)'!r} for {p}: expected one of {', '.join(allowed)}",
            path=str(p),
        )
    if not p.is_file():
        raise ModelLoadError(f"model file not found: {p}", path=str(p))
    return p


def _as_numpy(x: Any, name: str, shape: tuple[int, ...]) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    arr = np.ascontiguousarray(x, dtype=np.float32)
    if arr.ndim != 4 or arr.shape[1:] != shape:
        raise ValueError(f"{name} must have shape [B,{','.join(map(str, shape))}], got {arr.shape}")
    return arr


class Wav2LipRunner:
    """Callable ``(mel float32[B,1,80,16], face float32[B,6,96,96]) -> float32[B,3,96,96]`` (numpy).

    Attributes: ``backend`` ("torch" | "onnxruntime"), ``device`` ("cpu" | "cuda[:n]"),
    ``providers`` (onnxruntime execution providers in use; empty for torch), ``path``.
    """

    backend: str = ""
    device: str = "cpu"
    providers: list[str]

    def __init__(self, path: Path):
        self.path = path
        self.providers = []

    def __call__(self, mel: Any, face: Any) -> np.ndarray:
        mel_np = _as_numpy(mel, "mel", MEL_SHAPE)
        face_np = _as_numpy(face, "face", FACE_SHAPE)
        if mel_np.shape[0] != face_np.shape[0]:
            raise ValueError(f"batch mismatch: mel has {mel_np.shape[0]} rows, face {face_np.shape[0]}")
        if mel_np.shape[0] == 0:
            return np.zeros((0, *OUT_SHAPE), np.float32)
        return self._run(mel_np, face_np)

    def _run(self, mel: np.ndarray, face: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(path={str(self.path)!r}, backend={self.backend!r}, device={self.device!r})"


class TorchWav2LipRunner(Wav2LipRunner):
    backend = "torch"

    def __init__(self, path: Path, model: Wav2Lip, device: str):
        super().__init__(path)
        self.device = device
        self.half = device.startswith("cuda")
        model = model.to(device)
        if self.half:  # fp16 on CUDA: ~2x throughput; BatchNorm folded-in eval stats are fine in half
            model = model.half()
        self.model = model.eval()

    def _run(self, mel: np.ndarray, face: np.ndarray) -> np.ndarray:
        dtype = torch.float16 if self.half else torch.float32
        with torch.inference_mode():
            m = torch.from_numpy(mel).to(self.device, dtype=dtype, non_blocking=True)
            f = torch.from_numpy(face).to(self.device, dtype=dtype, non_blocking=True)
            out = self.model(m, f)
            return out.float().cpu().numpy()


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

    def _run(self, mel: np.ndarray, face: np.ndarray) -> np.ndarray:
        feeds = {self._mel_name: mel.astype(self._dtype, copy=False), self._face_name: face.astype(self._dtype, copy=False)}
        (out,) = self.session.run([self._out_name], feeds)
        return np.asarray(out, dtype=np.float32)


def _resolve_torch_device(device: str) -> str:
    device = (device or "cpu").lower()
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        log.warning("device %r requested but CUDA is not available to torch; running Wav2Lip on CPU", device)
        return "cpu"
    return device


def _onnx_session(path: Path, device: str):
    import onnxruntime as ort

    available = ort.get_available_providers()
    want_cuda = device != "cpu" and "CUDAExecutionProvider" in available
    if want_cuda and not torch.cuda.is_available():
        # onnxruntime-gpu lists the CUDA EP even on machines without a GPU / driver.
        log.warning("CUDAExecutionProvider listed but no usable GPU; running %s on CPU", path)
        want_cuda = False
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
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


def load_wav2lip(path: str | os.PathLike, device: str = "cpu") -> Wav2LipRunner:
    """Load a Wav2Lip generator for inference; see :class:`Wav2LipRunner` for the call convention.

    * ``.pth`` / ``.pt``: a public-format checkpoint (``{"state_dict": ...}``) or a raw state dict,
      ``module.`` prefixes stripped, loaded strictly; run by torch, in fp16 on CUDA.
    * ``.onnx``: run by onnxruntime, CUDA EP first when ``device`` is not "cpu" and a GPU is usable,
      else the CPU EP.

    ``device``: "cpu", "cuda", "cuda:N" or "auto". A CUDA request on a machine without a usable GPU
    logs a warning and runs on CPU. Every failure to load raises :class:`ModelLoadError` naming the file.
    """
    p = _check_path(path)
    if p.suffix.lower() in ONNX_SUFFIXES:
        return OnnxWav2LipRunner(p, _onnx_session(p, (device or "cpu").lower()))
    model = _model_from_state(_read_torch_checkpoint(p), p)
    return TorchWav2LipRunner(p, model, _resolve_torch_device(device))


# --------------------------------------------------------------------------------------------------
# ONNX export.


def _atomic_write(out: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=str(out.parent))
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; a model file is meant to be readable by workers
        os.replace(tmp, out)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def export_onnx(
    checkpoint_path: str | os.PathLike, out_path: str | os.PathLike, opset: int = 17, verify: bool = True
) -> Path:
    """Export a checkpoint to ONNX (inputs "mel", "face"; output "out"; dynamic batch axis), fp32.

    Uses torch's TorchScript-based exporter (``dynamo=False``): for this plain conv net it is the
    fastest and most predictable path, and gives one self-contained file (no external data). With
    ``verify`` the result is run by onnxruntime (CPU) on a batch of 2 and compared to torch.
    The file is written to a temporary name and moved into place, so readers never see half a file.
    """
    model = build_wav2lip_from_checkpoint(checkpoint_path)
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(0)
    mel = torch.randn(2, *MEL_SHAPE, generator=gen)
    face = torch.rand(2, *FACE_SHAPE, generator=gen)

    def write(tmp: str) -> None:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the legacy exporter's deprecation notice
            torch.onnx.export(
                model,
                (mel, face),
                tmp,
                input_names=["mel", "face"],
                output_names=["out"],
                dynamic_axes={"mel": {0: "batch"}, "face": {0: "batch"}, "out": {0: "batch"}},
                opset_version=opset,
                do_constant_folding=True,
                dynamo=False,
            )
        if verify:
            import onnxruntime as ort

            sess = ort.InferenceSession(tmp, providers=["CPUExecutionProvider"])
            (got,) = sess.run(["out"], {"mel": mel.numpy(), "face": face.numpy()})
            with torch.inference_mode():
                ref = model(mel, face).numpy()
            diff = float(np.abs(got - ref).max())
            if not diff < 1e-3:
                raise ModelLoadError(
                    f"ONNX export of {checkpoint_path} disagrees with torch (max abs diff {diff:.3g})",
                    path=str(checkpoint_path),
                )

    _atomic_write(out, write)
    return out
