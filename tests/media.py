"""Small synthetic media the tests create (nothing is downloaded, nothing big is committed)."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from av.video.reformatter import Interpolation

ASSETS = Path(__file__).resolve().parent.parent / "assets"
# swscale with exact rounding and full chroma input: the test's colours land where the maths says.
_ACCURATE_SWS = Interpolation.BILINEAR | Interpolation.ACCURATE_RND | Interpolation.FULL_CHR_H_INP


def speech_like(seconds: float, sr: int = 16000, seed: int = 0) -> np.ndarray:
    """A voiced/silent pattern with a clear envelope: harmonic 'syllables' separated by pauses."""
    rng = np.random.default_rng(seed)
    n = int(round(seconds * sr))
    t = np.arange(n) / sr
    env = np.zeros(n, np.float32)
    pos = 0.1
    while pos < seconds:
        dur = rng.uniform(0.12, 0.35)
        a, b = int(pos * sr), min(n, int((pos + dur) * sr))
        if b > a:
            env[a:b] = np.sin(np.linspace(0, np.pi, b - a)) ** 0.7 * rng.uniform(0.5, 1.0)
        pos += dur + rng.uniform(0.08, 0.3)
    f0 = 120 + 20 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(f0) / sr
    voiced = sum(np.sin(k * phase) / k for k in range(1, 12))
    y = 0.3 * env * voiced + 0.002 * rng.standard_normal(n)
    return y.astype(np.float32)


def write_audio(path: Path | str, samples: np.ndarray, sr: int = 16000, codec: str | None = None) -> Path:
    """Write mono float samples with PyAV. The container is taken from the suffix (wav, m4a, mp3, ogg, flac)."""
    path = Path(path)
    suffix = path.suffix.lower()
    codec = codec or {".wav": "pcm_s16le", ".m4a": "aac", ".mp3": "libmp3lame", ".ogg": "libopus",
                      ".opus": "libopus", ".flac": "flac"}[suffix]
    rate = 48000 if codec == "libopus" else sr
    if rate != sr:  # opus only takes 48 kHz; resample simply by linear interpolation
        x = np.linspace(0, len(samples) - 1, int(len(samples) * rate / sr))
        samples = np.interp(x, np.arange(len(samples)), samples).astype(np.float32)
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=rate, layout="mono")
        fmt = "s16" if codec.startswith("pcm_s16") else None
        chunk = 1024
        for i in range(0, len(samples), chunk):
            part = samples[i:i + chunk]
            if fmt == "s16":
                frame = av.AudioFrame.from_ndarray((np.clip(part, -1, 1) * 32767).astype(np.int16)[None], format="s16", layout="mono")
            else:
                frame = av.AudioFrame.from_ndarray(part[None].astype(np.float32), format="flt", layout="mono")
            frame.sample_rate = rate
            frame.pts = i
            frame.time_base = Fraction(1, rate)
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return path


def synthetic_frames(n: int, width: int, height: int, seed: int = 0):
    """Moving colour gradients with a frame counter drawn as a bar, so frames differ and order is checkable."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    for i in range(n):
        img = np.empty((height, width, 3), np.uint8)
        img[..., 0] = (xx / max(1, width - 1) * 200 + i * 3) % 256
        img[..., 1] = (yy / max(1, height - 1) * 200 + i * 5) % 256
        img[..., 2] = 128
        img[: height // 8, : max(1, (i % 32) * width // 32)] = 255
        yield img


def write_video(path: Path | str, frames, fps: Fraction | int = 25, audio: np.ndarray | None = None,
                codec: str = "libx264", rotation: int | None = None) -> Path:
    """Encode BGR frames (iterable of HxWx3 uint8) to a video file with PyAV, optionally with AAC audio."""
    path = Path(path)
    fps = Fraction(fps)
    frames = iter(frames)
    first = next(frames)
    h, w = first.shape[:2]
    with av.open(str(path), "w") as out:
        vs = out.add_stream(codec, rate=fps)
        vs.width, vs.height, vs.pix_fmt = w, h, "yuv420p"
        if rotation is not None:
            vs.set_display_rotation(-rotation)  # PyAV's angle is counter-clockwise
        a_s = out.add_stream("aac", rate=16000, layout="mono") if audio is not None else None

        def put(img, i):
            f = av.VideoFrame.from_ndarray(img, format="bgr24")
            f.pts = i
            for p in vs.encode(f):
                out.mux(p)

        put(first, 0)
        for i, img in enumerate(frames, start=1):
            put(img, i)
        for p in vs.encode(None):
            out.mux(p)
        if a_s is not None:
            for i in range(0, len(audio), 1024):
                af = av.AudioFrame.from_ndarray(audio[None, i:i + 1024].astype(np.float32), format="flt", layout="mono")
                af.sample_rate, af.pts = 16000, i
                for p in a_s.encode(af):
                    out.mux(p)
            for p in a_s.encode(None):
                out.mux(p)
    return path


def write_template(path: Path, frames, pix_fmt: str = "yuv420p", colorspace: int | None = None,
                   color_range: int | None = None, rotation: int | None = None, yuv_noise: int = 0,
                   crf: int = 0) -> Path:
    """A libx264 template (lossless at the default ``crf``) in ``pix_fmt`` with the given colour tags
    (``colorspace`` 1 = BT.709, 6 = BT.601; converted accurately, with those matrices).
    ``yuv_noise``: +-noise added to the yuv420p samples and a sub-black, saturated stripe along the
    top (outside the paste), so that not all samples are the conversion of some BGR picture, as in
    a real, lossy-coded template: a yuv -> bgr -> yuv round trip moves those."""
    rng = np.random.default_rng(5)
    h, w = frames[0].shape[:2]
    dst_cs = {None: None, 1: "itu709", 6: "smpte170m"}[colorspace]
    with av.open(str(path), "w") as out:
        vs = out.add_stream("libx264", rate=25)
        vs.width, vs.height, vs.pix_fmt = w, h, pix_fmt
        if colorspace is not None:
            vs.codec_context.colorspace = colorspace
        if color_range is not None:
            vs.codec_context.color_range = color_range
        vs.codec_context.options = {"crf": str(crf)}
        if rotation is not None:
            vs.set_display_rotation(-rotation)  # PyAV's angle is counter-clockwise
        for i, img in enumerate(frames):
            kw = {"interpolation": _ACCURATE_SWS}
            if dst_cs:
                kw["dst_colorspace"] = dst_cs
            if color_range is not None:
                kw["dst_color_range"] = color_range
            f = av.VideoFrame.from_ndarray(img, format="bgr24").reformat(format=pix_fmt, **kw)
            if yuv_noise:
                samples = f.to_ndarray().astype(np.int16)
                samples += rng.integers(-yuv_noise, yuv_noise + 1, samples.shape, dtype=np.int16)
                samples[:4] = 10  # sub-black luma in the top rows (4 rows of the upright frame or not)
                samples[h:h + 2] = 200  # and strongly coloured: out of the RGB gamut
                f = av.VideoFrame.from_ndarray(np.clip(samples, 0, 255).astype(np.uint8), format=pix_fmt)
            f.pts = i
            for p in vs.encode(f):
                out.mux(p)
        for p in vs.encode(None):
            out.mux(p)
    return path
