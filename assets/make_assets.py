"""Regenerate the demo assets: ``demo_template.mp4`` and ``demo_speech.wav``.

Run with the project's interpreter from the repository root::

    .venv/bin/python assets/make_assets.py            # both assets
    .venv/bin/python assets/make_assets.py --video    # only the template video
    .venv/bin/python assets/make_assets.py --speech   # only the speech

Inputs (see assets/README.md for the licences):

* The photo is scikit-image's bundled ``astronaut.png`` (NASA, public domain). It is taken from an
  importable ``skimage`` if there is one, from ``--astronaut PATH`` if given, or else from a
  scikit-image wheel that ``pip download`` fetches into a temporary folder (nothing is installed
  into any environment; the PNG is read straight out of the wheel's zip).
* The speech is synthesised by Debian's ``espeak-ng`` (``apt-get install espeak-ng``), then
  converted to 16 kHz mono 16-bit PCM WAV with PyAV.

The template is 4 s at 25 fps, 480x480, H.264 (crf 23, yuv420p): a crop centred on the face,
scaled up, with a slow, small drift of translation, zoom and rotation so that it looks like live
footage and the face tracker has something to follow.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import math
import shutil
import subprocess
import sys
import tempfile
import zipfile
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

HERE = Path(__file__).resolve().parent
VIDEO_PATH = HERE / "demo_template.mp4"
SPEECH_PATH = HERE / "demo_speech.wav"

# The astronaut.png shipped in scikit-image 0.26.0 (512x512 RGB); other versions ship the same photo.
SKIMAGE_VERSION = "0.26.0"
ASTRONAUT_SHA256 = "88431cd9653ccd539741b555fb0a46b61558b301d4110412b5bc28b5e3ea6cb5"

FPS = 25
SECONDS = 4.0
SIZE = 480  # output width and height (even)
# Square crop of the 512x512 photo that is scaled to SIZE: centred below the face (which sits at
# about x 177..270, y 67..160) so that the face, chin and collar fill the upper-middle of the frame.
CROP_CENTRE = (224.0, 158.0)
CROP_SIDE = 296.0
CRF = 23

SPEECH_TEXT = "Hello there. This is a short demo of lip sync, spoken by a synthetic voice."
SPEECH_VOICE = "en-us"
SPEECH_WPM = 150
SPEECH_RATE = 16000


# ----------------------------------------------------------------------------------------------
# The photo


def _decode_png(data: bytes) -> np.ndarray:
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if img is None:
        raise RuntimeError("astronaut.png could not be decoded")
    return img


def load_astronaut(path: str | None = None) -> np.ndarray:
    """The astronaut photo as a BGR uint8 array (512x512)."""
    if path:
        data = Path(path).read_bytes()
    else:
        data = None
        try:  # an importable scikit-image ships the file next to its data module
            import skimage.data  # type: ignore[import-not-found]

            candidate = Path(skimage.data.__file__).parent / "astronaut.png"
            if candidate.is_file():
                data = candidate.read_bytes()
        except ImportError:
            pass
        if data is None:
            data = _astronaut_from_wheel()
    digest = hashlib.sha256(data).hexdigest()
    if digest != ASTRONAUT_SHA256:
        print(f"note: astronaut.png sha256 {digest} differs from the one the assets were made from",
              file=sys.stderr)
    img = _decode_png(data)
    if img.shape[:2] != (512, 512):
        raise RuntimeError(f"astronaut.png has shape {img.shape}, expected 512x512")
    return img


def _astronaut_from_wheel() -> bytes:
    """Fetch a scikit-image wheel with ``pip download`` into a temp dir and read the PNG out of it."""
    with tempfile.TemporaryDirectory(prefix="lipserve-skimage-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "-q", "-d", tmp, f"scikit-image=={SKIMAGE_VERSION}"]
        print("fetching scikit-image wheel:", " ".join(cmd[2:]))
        res = subprocess.run(cmd, check=False)
        wheels = sorted(Path(tmp).glob("scikit_image-*.whl"))
        if res.returncode != 0 or not wheels:  # any version will do: the photo is the same
            cmd[-1] = "scikit-image"
            subprocess.run(cmd, check=True)
            wheels = sorted(Path(tmp).glob("scikit_image-*.whl"))
        if not wheels:
            raise RuntimeError("pip download produced no scikit-image wheel")
        with zipfile.ZipFile(wheels[0]) as zf:
            return zf.read("skimage/data/astronaut.png")


# ----------------------------------------------------------------------------------------------
# The template video


def _frame_transform(t: float) -> np.ndarray:
    """2x3 affine from the photo to an output frame at time t (seconds): crop, scale and drift."""
    # Slow incommensurate sinusoids: a few pixels of sway, ~2 % breathing zoom, ~1.5 degree tilt.
    dx = 4.0 * math.sin(2 * math.pi * 0.21 * t) + 1.5 * math.sin(2 * math.pi * 0.53 * t + 1.0)
    dy = 3.0 * math.sin(2 * math.pi * 0.17 * t + 0.6) + 1.0 * math.sin(2 * math.pi * 0.61 * t)
    zoom = 1.0 + 0.02 * math.sin(2 * math.pi * 0.23 * t + 0.3)
    angle = 1.5 * math.sin(2 * math.pi * 0.19 * t + 1.7)  # degrees
    cx, cy = CROP_CENTRE
    scale = SIZE / CROP_SIDE * zoom
    m = cv2.getRotationMatrix2D((cx + dx, cy + dy), angle, scale)
    # Move the (drifted) crop centre to the centre of the output frame.
    m[0, 2] += SIZE / 2 - (cx + dx)
    m[1, 2] += SIZE / 2 - (cy + dy)
    return m


def template_frames(photo_bgr: np.ndarray, n: int, fps: int = FPS):
    for i in range(n):
        m = _frame_transform(i / fps)
        yield cv2.warpAffine(photo_bgr, m, (SIZE, SIZE), flags=cv2.INTER_CUBIC,
                             borderMode=cv2.BORDER_REFLECT101)


def write_template(photo_bgr: np.ndarray, out_path: Path = VIDEO_PATH) -> Path:
    n = int(round(SECONDS * FPS))
    tmp = out_path.with_name(out_path.stem + ".tmp" + out_path.suffix)
    with av.open(str(tmp), "w", format="mp4") as out:
        vs = out.add_stream("libx264", rate=Fraction(FPS))
        vs.width = vs.height = SIZE
        vs.pix_fmt = "yuv420p"
        # threads=1 keeps the bitstream reproducible from run to run.
        vs.options = {"crf": str(CRF), "preset": "medium", "threads": "1"}
        for i, img in enumerate(template_frames(photo_bgr, n)):
            frame = av.VideoFrame.from_ndarray(img, format="bgr24")
            frame.pts = i
            for packet in vs.encode(frame):
                out.mux(packet)
        for packet in vs.encode(None):
            out.mux(packet)
    tmp.replace(out_path)
    return out_path


# ----------------------------------------------------------------------------------------------
# The speech


def write_speech(out_path: Path = SPEECH_PATH, text: str = SPEECH_TEXT) -> Path:
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise SystemExit("espeak-ng not found: apt-get update && apt-get install -y espeak-ng")
    with tempfile.TemporaryDirectory(prefix="lipserve-speech-") as tmp:
        raw = Path(tmp) / "espeak.wav"
        # An argument list, never a shell: the text is passed verbatim.
        subprocess.run([exe, "-v", SPEECH_VOICE, "-s", str(SPEECH_WPM), "-w", str(raw), text], check=True)
        samples = _decode_to_16k_s16(raw)
    tmp_out = out_path.with_name(out_path.stem + ".tmp" + out_path.suffix)
    with av.open(str(tmp_out), "w", format="wav") as out:
        stream = out.add_stream("pcm_s16le", rate=SPEECH_RATE, layout="mono")
        chunk = 4096
        for i in range(0, len(samples), chunk):
            frame = av.AudioFrame.from_ndarray(samples[None, i:i + chunk], format="s16", layout="mono")
            frame.sample_rate = SPEECH_RATE
            frame.pts = i
            frame.time_base = Fraction(1, SPEECH_RATE)
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    tmp_out.replace(out_path)
    return out_path


def _decode_to_16k_s16(path: Path) -> np.ndarray:
    """Decode any audio file and resample it to 16 kHz mono s16 with PyAV's resampler."""
    resampler = av.AudioResampler(format="s16", layout="mono", rate=SPEECH_RATE)
    parts: list[np.ndarray] = []
    with av.open(str(path)) as inp:
        for frame in inp.decode(audio=0):
            for rs in resampler.resample(frame):
                parts.append(rs.to_ndarray().reshape(-1))
    for rs in resampler.resample(None):
        parts.append(rs.to_ndarray().reshape(-1))
    if not parts:
        raise RuntimeError(f"{path}: espeak-ng produced no audio")
    return np.concatenate(parts).astype(np.int16)


# ----------------------------------------------------------------------------------------------


def _describe(path: Path) -> str:
    with av.open(str(path)) as c:
        dur = c.duration / 1e6 if c.duration else float("nan")
        if c.streams.video:
            s = c.streams.video[0]
            what = f"{s.codec_context.name} {s.width}x{s.height} {s.average_rate} fps, {s.frames} frames"
        else:
            s = c.streams.audio[0]
            what = f"{s.codec_context.name} {s.rate} Hz {s.layout.name}"
    return f"{path.name}: {what}, {dur:.2f} s, {path.stat().st_size / 1024:.0f} KiB"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--video", action="store_true", help="make only the template video")
    ap.add_argument("--speech", action="store_true", help="make only the speech WAV")
    ap.add_argument("--astronaut", help="path to astronaut.png (default: scikit-image's copy)")
    args = ap.parse_args(argv)
    both = not (args.video or args.speech)
    if both or args.video:
        write_template(load_astronaut(args.astronaut))
        print(_describe(VIDEO_PATH))
    if both or args.speech:
        write_speech()
        print(_describe(SPEECH_PATH))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
