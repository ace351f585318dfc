"""Weight-free default generator: audio-driven warp of the lower face.

``MouthWarpGenerator`` needs no model file, so a fresh machine can render a convincing demo. It
implements the ``Generator`` protocol (``name``, ``crop_size``, ``generate(faces, mels)``).

How a frame is made (everything depends only on that frame's crop and mel window; no state is
kept between calls, so batches can be computed out of order or retried):

1. **Openness** in [0, 1] from the Wav2Lip-normalised mel window (80 bands x 16 columns, values in
   [-4, 4], window starting at the frame's time). Per column, the level of the speech bands
   (~300-3000 Hz) is a soft maximum over bands (log-mean-exp), so a few strong formant bands count
   more than the spread between harmonics. The frame's level is a weighted mean over columns 0..5
   (heavier on 0..3: the 40 ms that belong to the frame at 25 fps), so mouth motion has lag 0 to
   the sound. A mild correction by the window's own floor (its quietest column) keeps steady
   background noise from holding the mouth open. A soft knee (smoothstep) maps silence (-4, or a
   quiet noise floor) to exactly 0 and loud voiced speech to ~1. Neighbouring frames' windows
   overlap, so the value is temporally smooth by construction.
2. **Shape cue**: the tilt between the upper (1.2-3.5 kHz) and lower (250-900 Hz) speech bands
   makes the mouth slightly wider (bright, "ee") or rounder and narrower (dark, "oo").
3. **Render** with one ``cv2.remap`` per crop on a region of interest in the lower face: a smooth,
   monotone backward map moves the lower lip/jaw down by up to ~7-8 % of the crop height
   (peaking at the mouth line, decaying to 0 at the bottom edge and towards the cheeks) and lifts the
   upper lip slightly. The rows between the lips are stretched apart; where the map stretches
   most, an inner-mouth tone (a dark red-brown derived from the crop's own darkest lip pixels) is
   blended in, so the gap between the lips reads as an open mouth. Its height follows openness.

Guarantees: openness 0 returns the input crop byte-identical; the upper half of the crop is never
touched (the region of interest starts below the middle row); pixels the warp does not move and
the darkening does not reach are copied from the input.

The mouth line is taken at ~72 % of the crop height (the face box is padded 10 px at the bottom)
and refined per crop by a soft, continuous estimate of the darkest row near it (the lip line).
"""

from __future__ import annotations

import numpy as np
import cv2

from actors.crop_geometry import PaddedBoxGeometry
from actors.errors import InvalidParameterError
from actors.generators.mel import hz_to_mel_slaney, mel_features, mel_to_hz_slaney

__all__ = ["MouthWarpGenerator", "openness_from_mels", "mel_band_centres"]

N_MELS = 80
MEL_FMIN, MEL_FMAX = 55.0, 7600.0

# Column weights of the "now" part of a window (80 columns/s; the frame itself covers ~3.2 columns at
# 25 fps and each column's analysis window is centred on it).
_COL_WEIGHTS = np.array([1.0, 1.0, 1.0, 1.0, 0.5, 0.25], np.float32)
_COL_WEIGHTS /= _COL_WEIGHTS.sum()

# Soft knee on the speech-band level (normalised mel units; 1 unit = 12.5 dB).
_KNEE_LO, _KNEE_HI = -2.2, 0.5
_NOISE_FLOOR = -1.9     # a window floor above this is treated partly as steady background noise
_NOISE_COMP = 0.6       # how much of that excess floor is subtracted
_LSE_BETA = 2.0         # softness of the soft maximum over bands


def mel_band_centres(n_mels: int = N_MELS, fmin: float = MEL_FMIN, fmax: float = MEL_FMAX) -> np.ndarray:
    """Centre frequencies (Hz) of the Slaney-scale mel bands used by the Wav2Lip front-end."""
    mels = np.linspace(hz_to_mel_slaney(fmin), hz_to_mel_slaney(fmax), n_mels + 2)
    return mel_to_hz_slaney(mels)[1:-1]


_CENTRES = mel_band_centres()
_SPEECH = (_CENTRES >= 300) & (_CENTRES <= 3000)
_LOW = (_CENTRES >= 250) & (_CENTRES <= 900)
_HIGH = (_CENTRES >= 1200) & (_CENTRES <= 3500)


def _soft_max_bands(x: np.ndarray, sel: np.ndarray) -> np.ndarray:
    """log-mean-exp over the selected mel bands: [B,80,C] -> [B,C]."""
    v = x[:, sel, :].astype(np.float64) * _LSE_BETA
    top = v.max(axis=1, keepdims=True)
    return ((np.log(np.exp(v - top).mean(axis=1)) + top[:, 0, :]) / _LSE_BETA)


def _smoothstep(t):
    t = np.clip(t, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def openness_from_mels(mels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-window mouth openness in [0, 1] and a spread cue in [0, 1] (0 round/narrow, 1 wide).

    ``mels``: float[B, 80, C] Wav2Lip-normalised windows (C >= 1; 16 in the pipeline), starting at the
    frame's time. Pure function of each window.
    """
    m = np.nan_to_num(np.asarray(mels, np.float32), nan=-4.0, posinf=4.0, neginf=-4.0)
    m = np.clip(m, -4.0, 4.0)
    b, _, c = m.shape
    k = min(c, len(_COL_WEIGHTS))
    w = _COL_WEIGHTS[:k] / _COL_WEIGHTS[:k].sum()

    level_cols = _soft_max_bands(m, _SPEECH)                     # [B, C]
    level = level_cols[:, :k] @ w                                # the frame's own audio
    floor = level_cols.min(axis=1)                               # quietest column of the window
    eff = level - _NOISE_COMP * np.maximum(0.0, floor - _NOISE_FLOOR)
    openness = _smoothstep((eff - _KNEE_LO) / (_KNEE_HI - _KNEE_LO))

    tilt = (_soft_max_bands(m[:, :, :k], _HIGH) - _soft_max_bands(m[:, :, :k], _LOW)) @ w
    spread = 1.0 / (1.0 + np.exp(-(tilt + 0.3) / 0.6))
    return openness.astype(np.float32), spread.astype(np.float32)


class MouthWarpGenerator:
    """Weight-free lip-sync generator (see module docstring)."""

    name = "mouth_warp"

    # Geometry, as fractions of the crop size S.
    MOUTH_Y = 0.75          # prior mouth line
    MOUTH_Y_RANGE = (0.64, 0.84)
    MAX_DROP = 0.075        # lower lip / jaw drop at openness 1
    LIFT = 0.2              # upper-lip lift, relative to the drop
    UPPER_REACH = 0.14      # displacement is 0 this far above the mouth line
    HALF_WIDTH = 0.30       # horizontal reach of the displacement from the centre
    GAP_HALF_WIDTH = 0.20   # horizontal reach of the lip parting (mouth corners stay nearly shut)
    MOUTH_HALF_WIDTH = 0.16  # half width of the mouth (inner-mouth darkening)
    LIP_LINE = 0.012        # half height of the lip-line strip that is stretched over the gap
    RIGID_UPPER = 0.03      # upper lip thickness moved rigidly
    RIGID_LOWER = 0.04      # lower lip thickness moved rigidly
    DARK_MAX = 0.96         # strongest blend of the inner-mouth tone

    def __init__(self, crop_size: int = 160):
        crop_size = int(crop_size)
        if crop_size < 32:
            raise InvalidParameterError(f"mouth_warp: crop_size must be >= 32, got {crop_size}", stage="generate")
        self.crop_size = crop_size
        self.crop_geometry = PaddedBoxGeometry(crop_size)

    # ------------------------------------------------------------------ public API
    def prepare_audio(self, samples_16k: np.ndarray, fps, n_frames: int) -> np.ndarray:
        """The Wav2Lip mel windows (its features drive the mouth opening): ``float32[n,80,16]``."""
        return mel_features(samples_16k, fps, n_frames)

    def generate(self, faces: np.ndarray, mels: np.ndarray) -> np.ndarray:
        faces = np.asarray(faces)
        mels = np.asarray(mels)
        if faces.ndim != 4 or faces.shape[-1] != 3 or faces.shape[1] != faces.shape[2]:
            raise InvalidParameterError(
                f"mouth_warp: faces must be uint8[B,S,S,3], got shape {faces.shape}", stage="generate")
        if faces.dtype != np.uint8:
            raise InvalidParameterError(f"mouth_warp: faces must be uint8, got {faces.dtype}", stage="generate")
        if mels.ndim != 3 or mels.shape[0] != faces.shape[0] or mels.shape[1] != N_MELS:
            raise InvalidParameterError(
                f"mouth_warp: mels must be float32[B,80,16] with B={faces.shape[0]}, got shape {mels.shape}",
                stage="generate")
        out = faces.copy()
        if faces.shape[0] == 0:
            return out
        openness, spread = openness_from_mels(mels)
        for i in np.nonzero(openness > 1e-4)[0]:
            out[i] = self._render(faces[i], float(openness[i]), float(spread[i]))
        return out

    __call__ = generate

    # ------------------------------------------------------------------ internals
    def _mouth_line(self, face: np.ndarray) -> float:
        """Soft estimate of the mouth line (where the lips part), in pixels.

        Near the prior row, two weighted row centroids: one over visible teeth (bright, low-chroma
        pixels, as in a smile), one over the lips (pixels redder than the face around them) and the
        darkest rows (the lip line of a closed mouth). They are mixed by how much teeth are visible.
        Every step is continuous in the image content, so small changes between template frames move
        the line only a little.
        """
        s = face.shape[0]
        y0, y1 = int(s * 0.60), int(np.ceil(s * 0.90))
        x0, x1 = int(s * 0.38), int(np.ceil(s * 0.62))
        roi = face[y0:y1, x0:x1].astype(np.float32)
        ys = (np.arange(y0, y1) + 0.5) / s
        prior = np.exp(-0.5 * ((ys - self.MOUTH_Y) / 0.05) ** 2)

        gray = roi @ np.array([0.114, 0.587, 0.299], np.float32)
        hi, lo = roi.max(axis=2), roi.min(axis=2)
        chroma = (hi - lo) / (hi + 1.0)
        red = (roi[..., 2] - roi[..., 1]) / (roi.sum(axis=2) + 1.0)
        med_chroma, med_gray, med_red = (float(np.median(v)) for v in (chroma, gray, red))

        teeth = (np.clip((0.7 * med_chroma - chroma) / max(0.3 * med_chroma, 1e-3), 0.0, 1.0)
                 * np.clip((gray - med_gray) / 20.0, 0.0, 1.0))
        lips = np.clip((red - med_red) / 0.05, 0.0, 1.0)
        gray_rows = gray.mean(axis=1)
        tau = max(3.0, 0.2 * float(gray_rows.max() - gray_rows.min()))
        dark = np.exp(-(gray_rows - gray_rows.min()) / tau)

        def centroid(w):
            w = w * prior
            total = float(w.sum())
            return float((w * ys).sum() / total) if total > 1e-9 else self.MOUTH_Y

        teeth_rows = teeth.mean(axis=1)
        lips_rows = lips.mean(axis=1)
        closed = centroid(0.5 * lips_rows / max(float(lips_rows.sum()), 1e-6) + 0.5 * dark / float(dark.sum()))
        presence = float(np.clip((float(teeth.mean()) - 0.01) / 0.03, 0.0, 1.0))
        est = presence * centroid(teeth_rows) + (1.0 - presence) * closed
        est = min(max(est, self.MOUTH_Y_RANGE[0]), self.MOUTH_Y_RANGE[1])
        return est * s

    def _render(self, face: np.ndarray, openness: float, spread: float) -> np.ndarray:
        s = face.shape[0]
        m = self._mouth_line(face)
        cx = (s - 1) / 2.0

        # Region of interest: never above the middle row, never beyond the horizontal reach.
        ry0 = max(s // 2, int(np.floor(m - self.UPPER_REACH * s)) - 1)
        rx0 = max(0, int(np.floor(cx - self.HALF_WIDTH * s)) - 1)
        rx1 = min(s, int(np.ceil(cx + self.HALF_WIDTH * s)) + 2)
        ys = np.arange(ry0, s, dtype=np.float32)[:, None]          # [H,1]
        xs = np.arange(rx0, rx1, dtype=np.float32)[None, :]        # [1,W]
        u = np.abs(xs - cx)

        # Rounder (dark spectrum) mouths open a little taller and narrower; wide ones flatter.
        drop = self.MAX_DROP * s * openness * (0.92 + 0.16 * (1.0 - spread))
        gx = 1.0 - _smoothstep(u / (self.HALF_WIDTH * s))           # broad: jaw and cheeks
        g_lips = 1.0 - _smoothstep(u / (self.GAP_HALF_WIDTH * s))   # narrow: lips part in the middle
        dd = drop * (0.75 * g_lips + 0.25 * gx)                     # [1,W] lower-lip drop per column
        ll = self.LIFT * dd                                         # upper-lip lift per column

        # Vertical source map (output(y) = input(src_y)), monotone and C1 by construction. Between the
        # lips a narrow source strip [m - delta, m + delta] (the lip line) is stretched over the gap with
        # an odd profile src = m + a*t + b*t*|t|^3 whose slope is 1 at the band edges; above it the upper
        # lip moves up rigidly by ll, below it the lower lip moves down rigidly by dd, and both
        # displacements taper smoothly to 0 (towards the nose and the bottom edge).
        delta = (dd + ll) / 6.0 + self.LIP_LINE * s                 # half source strip
        h = 0.5 * (dd + ll) + delta                                 # half output band
        c = m + 0.5 * (dd - ll)                                     # gap centre in the output
        a = (4.0 * delta / h - 1.0) / 3.0
        b = (delta - a * h) / h ** 4
        top = m - self.UPPER_REACH * s
        y_up = c - h - self.RIGID_UPPER * s
        y_lo = c + h + self.RIGID_LOWER * s
        bottom = float(s - 1)
        t = ys - c
        up = _smoothstep((ys - top) / np.maximum(y_up - top, 1.0))
        down = 1.0 - _smoothstep((ys - y_lo) / np.maximum(bottom - y_lo, 1.0))
        map_y = np.where(t < -h, ys + ll * up,
                         np.where(t <= h, m + a * t + b * t * np.abs(t) ** 3, ys - dd * down))
        d = ys - map_y

        # Mouth width: slightly narrower when open, wider for bright (spread) sounds.
        sw = 1.0 + openness * (0.08 * (spread - 0.5) - 0.03)
        hmask = (1.0 - _smoothstep(np.abs(ys - m) / (0.12 * s))) * gx   # 0 before the ROI's edges
        map_x = xs + (xs - cx) * ((1.0 / sw) - 1.0) * hmask

        warped = cv2.remap(face, map_x.astype(np.float32), map_y.astype(np.float32),
                           interpolation=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)

        # Inner mouth: where the map stretches the lip line apart, blend in a dark tone.
        stretch = 1.0 - np.gradient(map_y, axis=0)                                 # 0 = no stretch
        hx = np.clip(1.0 - (u / (self.MOUTH_HALF_WIDTH * s * sw)) ** 2, 0.0, 1.0) ** 0.5
        alpha = _smoothstep((stretch - 0.25) / 0.45) * hx * self.DARK_MAX * _smoothstep(openness / 0.25)
        alpha = alpha.astype(np.float32)[..., None]
        tone = self._inner_tone(face, m)
        blended = warped.astype(np.float32) * (1.0 - alpha) + tone * alpha

        roi_in = face[ry0:, rx0:rx1]
        changed = ((np.abs(d) > 1e-3) | (np.abs(map_x - xs) > 1e-3))[..., None] | (alpha > 1e-3)
        roi_out = np.where(changed, np.clip(blended + 0.5, 0, 255).astype(np.uint8), roi_in)
        out = face.copy()
        out[ry0:, rx0:rx1] = roi_out
        return out

    def _inner_tone(self, face: np.ndarray, m: float) -> np.ndarray:
        """Dark red-brown inner-mouth tone, its brightness from the crop's own darkest lip pixels."""
        s = face.shape[0]
        y0, y1 = int(max(0, m - 0.05 * s)), int(min(s, m + 0.05 * s + 1))
        x0, x1 = int(s * 0.5 - self.MOUTH_HALF_WIDTH * s), int(s * 0.5 + self.MOUTH_HALF_WIDTH * s + 1)
        px = face[y0:y1, x0:x1].reshape(-1, 3).astype(np.float32)
        lum = px @ np.array([0.114, 0.587, 0.299], np.float32)
        k = max(1, len(lum) // 10)
        dark_lum = float(np.partition(lum, k - 1)[:k].mean())
        fixed = np.array([28.0, 30.0, 70.0], np.float32)             # BGR dark red-brown
        fixed_lum = float(fixed @ np.array([0.114, 0.587, 0.299], np.float32))
        # Hue fixed, brightness following the crop's darkest lip pixels (lighting / skin tone).
        return fixed * float(np.clip(0.45 * dark_lum / fixed_lum, 0.6, 1.4))
