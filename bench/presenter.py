"""The head-to-head inputs every CPU bench shares: a 10 s 576x768 presenter clip, speech-like audio,
one random-init Wav2Lip checkpoint (torch and ONNX) and a fixed face box.

Built once into a folder (``prepare(work)``) and reused by every bench in the run:

* ``presenter_576x768.mp4``: the bundled ``assets/demo_template.mp4`` (480x480, 4 s, a real face)
  scaled to 576x768 with OpenCV and ping-ponged to ``seconds`` (250 frames for 10 s), libx264 via
  PyAV. A template as long as the audio, so neither pipeline cycles frames.
* ``speech.wav``: ``tests.media.speech_like`` of the same length (16 kHz mono).
* ``wav2lip_random.pth`` / ``wav2lip_mouth.onnx``: ``save_random_checkpoint`` + ``export_onnx`` (random
  weights: the pictures are meaningless, speed is real).
* the face box: the Haar detector's box on the first frame of the scaled clip, fixed for all frames
  (``--box`` in ``lipserve render``); ``padded_box`` is the same box with Wav2Lip's default pads,
  the region both pipelines crop.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / "assets" / "demo_template.mp4"
WIDTH, HEIGHT = 576, 768


@dataclass(frozen=True)
class PresenterInputs:
    template: str
    audio: str
    checkpoint: str  # .pth (torch)
    onnx: str
    box: tuple[int, int, int, int]  # x1 y1 x2 y2 (the face, as detected)
    padded_box: tuple[int, int, int, int]  # x1 y1 x2 y2 with pads (0, 10, 0, 0): the crop region
    seconds: float
    frames: int


def _scaled_pingpong(seconds: float):
    import cv2

    from actors.media.template import iter_frames
    from actors.plan import source_index_map

    src = [cv2.resize(f, (WIDTH, HEIGHT), interpolation=cv2.INTER_AREA) for _, f in iter_frames(DEMO)]
    n = int(round(seconds * 25))
    for i in source_index_map(n, len(src), "pingpong"):
        yield src[int(i)]


def prepare(work: str | Path, seconds: float = 10.0) -> PresenterInputs:
    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    meta = work / f"presenter-{seconds:g}s-v2.json"  # v2: the ONNX file is a mouth-window export
    if meta.exists():
        d = json.loads(meta.read_text())
        return PresenterInputs(**{**d, "box": tuple(d["box"]), "padded_box": tuple(d["padded_box"])})

    from actors.compose import crop_box
    from actors.face.detector import make_detector
    from actors.media.template import iter_frames
    from actors.models.wav2lip import save_random_checkpoint
    from actors.models.wav2lip_export import export_onnx
    from tests.media import speech_like, write_audio, write_video

    template = write_video(work / f"presenter_{WIDTH}x{HEIGHT}_{seconds:g}s.mp4", _scaled_pingpong(seconds))
    audio = write_audio(work / f"speech_{seconds:g}s.wav", speech_like(seconds, seed=0))
    ckpt = work / "wav2lip_random.pth"
    if not ckpt.exists():
        save_random_checkpoint(ckpt)
    onnx = work / "wav2lip_mouth.onnx"
    if not onnx.exists():
        export_onnx(ckpt, onnx)
    _, first = next(iter_frames(template))
    faces = make_detector(None).detect(first)
    if len(faces) == 0:
        raise RuntimeError(f"no face found in the first frame of {template}")
    x1, y1, x2, y2 = (int(round(v)) for v in faces[0][:4])
    box = (x1, y1, x2, y2)
    padded = crop_box(box, WIDTH, HEIGHT, (0, 10, 0, 0))
    n_frames = int(round(seconds * 25))
    inputs = PresenterInputs(template=str(template), audio=str(audio), checkpoint=str(ckpt), onnx=str(onnx),
                             box=box, padded_box=tuple(int(v) for v in padded), seconds=seconds, frames=n_frames)
    meta.write_text(json.dumps(asdict(inputs)))
    return inputs
