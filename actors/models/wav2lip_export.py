"""Exporting a Wav2Lip checkpoint to ONNX (``lipserve export-onnx``)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from actors.errors import ModelLoadError
from actors.media.atomic import atomic_write
from actors.models.wav2lip import FACE_SHAPE, MEL_SHAPE, build_wav2lip_from_checkpoint
from actors.models.wav2lip_spec import WINDOW_METADATA_KEY, format_window
from actors.models.wav2lip_window import MOUTH_WINDOW, Wav2LipWindowed


def export_onnx(
    checkpoint_path: str | os.PathLike, out_path: str | os.PathLike, opset: int = 17, verify: bool = True,
    window: str | tuple[int, int, int, int] | None = "mouth",
) -> Path:
    """Export a checkpoint to ONNX (inputs "mel", "face"; output "out"; dynamic batch axis), fp32.

    ``window``: "mouth" (default) exports :class:`~actors.models.wav2lip_window.Wav2LipWindowed`
    over :data:`~actors.models.wav2lip_window.MOUTH_WINDOW`, the part of the crop the paste reads
    (output ``[B,3,h,w]``, the window recorded in the file's metadata as ``lipserve.output_window``);
    a ``(r0, r1, c0, c1)`` tuple another window; None the whole 96x96 crop.

    Uses torch's TorchScript-based exporter (``dynamo=False``): for this plain conv net it is the
    fastest and most predictable path, and gives one self-contained file (no external data). With
    ``verify`` the result is run by onnxruntime (CPU) on a batch of 2 and compared to torch.
    The file is written to a temporary name and moved into place, so readers never see half a file.
    """
    model = build_wav2lip_from_checkpoint(checkpoint_path)
    if window == "mouth":
        window = MOUTH_WINDOW
    if window is not None:
        model = Wav2LipWindowed(model, window).eval()
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(0)
    mel = torch.randn(2, *MEL_SHAPE, generator=gen)
    face = torch.rand(2, *FACE_SHAPE, generator=gen)

    def write(tmp) -> None:
        tmp = str(tmp)
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
        if window is not None:
            import onnx

            proto = onnx.load(tmp)
            entry = proto.metadata_props.add()
            entry.key, entry.value = WINDOW_METADATA_KEY, format_window(window)
            onnx.save(proto, tmp)
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

    atomic_write(out, write)
    os.chmod(out, 0o644)  # a model file is meant to be readable by every worker
    return out
