"""How a backend cuts its face crop out of a frame and pastes the generated crop back.

Each generator declares one of these as its ``crop_geometry`` attribute; the avatar cache
(``actors/avatar.py``) crops with it and keys the cache by it, the segment writer pastes with it.
Nothing else in the pipeline knows which backend runs. Geometries are small frozen dataclasses:
they travel to the writer processes inside ``AvatarParams`` / ``Avatar``.

* :class:`PaddedBoxGeometry` - Wav2Lip's (and the mouth warp's): the face box padded by ``pads``
  pixels, resized to a square with ``INTER_AREA``, pasted back through the feathered lower-face
  ellipse after a colour transfer (``actors/compose.py``). Exactly what lipserve always did.
* :class:`MuseTalkGeometry` - MuseTalk 1.5's: a non-square nose-anchored box
  (``actors/generators/musetalk_crop.py``), Lanczos to 256x256, pasted back bilinear into the
  reference's 1.5x blend square through its feathered lower-half alpha
  (``actors/face/musetalk_blend.py``); no colour transfer (the reference has none). With BiSeNet
  weights (``parsing_dir``) the alpha follows the parsed face (``jaw`` mode): it depends on the
  frame, so the avatar cache computes it once per template frame (``make_masker``) and the writer
  pastes with the stored mask.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar, Protocol, Sequence, runtime_checkable

import numpy as np

from actors.compose import composite, crop_box, extract_crop, paste_bounds, paste_source_window
from actors.errors import InvalidParameterError

Box = tuple[int, int, int, int]


@runtime_checkable
class CropGeometry(Protocol):
    kind: ClassVar[str]
    crop_size: int

    def crop_box(self, face_box: Sequence[float], frame_w: int, frame_h: int,
                 landmarks: np.ndarray | None = None) -> Box: ...  # landmarks: the tracker's 5 points
    def extract(self, frame: np.ndarray, box: Sequence[int]) -> np.ndarray: ...
    # inplace: the frame may be written into. window = (x, y, frame_w, frame_h): ``frame`` is only
    # the part of a frame_w x frame_h frame starting at pixel (x, y), holding paste_region(box);
    # box and mask are as for the whole frame, and the part comes out as that part of a whole paste.
    def paste(self, frame: np.ndarray, box: Sequence[int], generated: np.ndarray, *,
              color_match: bool = True, mask: np.ndarray | None = None,
              inplace: bool = False, window: tuple[int, int, int, int] | None = None) -> np.ndarray: ...
    # (x1, y1, x2, y2) in the frame: paste reads and changes no pixel outside it (may be empty).
    def paste_region(self, box: Sequence[int], frame_w: int, frame_h: int) -> Box: ...
    def describe(self) -> dict: ...
    # Per-frame paste masks, for geometries whose mask depends on the frame's content: None, or a
    # function (frame, box) -> uint8[side, side] with side = mask_side(box), run at avatar build.
    def make_masker(self): ...
    def mask_side(self, box: Sequence[int]) -> int: ...


def _describe(geometry) -> dict:
    return {"kind": geometry.kind, **dataclasses.asdict(geometry)}


@dataclass(frozen=True)
class PaddedBoxGeometry:
    """Wav2Lip-style square crop of the padded face box (see the module docstring)."""

    kind: ClassVar[str] = "padded_box"
    crop_size: int = 160
    pads: tuple[int, int, int, int] = (0, 10, 0, 0)  # top, bottom, left, right (Wav2Lip's default)

    def __post_init__(self):
        if int(self.crop_size) < 16:
            raise InvalidParameterError(f"crop_size must be >= 16, got {self.crop_size}")

    def crop_box(self, face_box, frame_w, frame_h, landmarks=None) -> Box:
        return crop_box(face_box, frame_w, frame_h, self.pads)

    def extract(self, frame, box) -> np.ndarray:
        return extract_crop(frame, box, self.crop_size)

    def paste(self, frame, box, generated, *, color_match: bool = True, mask=None,
              inplace: bool = False, window=None) -> np.ndarray:
        return composite(frame, box, generated, color_match=color_match, inplace=inplace, window=window)

    def paste_region(self, box, frame_w, frame_h) -> Box:
        return paste_bounds(box, frame_w, frame_h)  # the feathered ellipse's bounding rectangle

    def source_window(self) -> tuple[int, int, int, int]:
        """``(r0, r1, c0, c1)`` of the generated crop that :meth:`paste` reads (the rest may hold
        anything): what a generator must compute."""
        return paste_source_window(self.crop_size)

    def describe(self) -> dict:
        return _describe(self)

    def make_masker(self):
        return None  # the feathered ellipse depends on the box size only

    def mask_side(self, box) -> int:
        return 0


@dataclass(frozen=True)
class MuseTalkGeometry:
    """MuseTalk 1.5's crop and blend (see the module docstring). ``nose_mid_fraction``: where the
    boxes-only approximation puts the nose bridge in the detector box (see ``musetalk_crop``)."""

    kind: ClassVar[str] = "musetalk"
    crop_size: int = 256
    nose_mid_fraction: float = 0.39
    extra_margin: int = 10
    blur_ratio: float = 0.05
    parsing_dir: str | None = None  # models dir holding face-parse-bisent/79999_iter.pth
    parsing_mode: str = "jaw"

    def __post_init__(self):
        from actors.generators.musetalk_crop import CROP_SIZE

        if int(self.crop_size) != CROP_SIZE:
            raise InvalidParameterError(f"MuseTalk crops are {CROP_SIZE} px, got {self.crop_size}")

    def crop_box(self, face_box, frame_w, frame_h, landmarks=None) -> Box:
        """Anchored on the nose with five points (``landmarks``), else the boxes-only approximation."""
        from actors.generators.musetalk_crop import crop_box_from_face_box, crop_box_from_five_points

        if landmarks is not None:
            try:
                box = crop_box_from_five_points(face_box, landmarks, frame_h, extra_margin=self.extra_margin)
            except InvalidParameterError:  # points that do not fit the box: the reference falls back too
                box = None
        if landmarks is None or box is None:
            box = crop_box_from_face_box(face_box, frame_h, self.nose_mid_fraction, self.extra_margin)
        x1, y1, x2, y2 = box
        return x1, y1, min(int(x2), int(frame_w)), y2

    def extract(self, frame, box) -> np.ndarray:
        from actors.generators.musetalk_crop import extract_crop as musetalk_extract

        return musetalk_extract(frame, box)

    def paste(self, frame, box, generated, *, color_match: bool = True, mask=None,
              inplace: bool = False, window=None) -> np.ndarray:
        # The reference pastes without a colour transfer; ``color_match`` is the writer's default
        # for the padded geometry and does not apply here. Always returns a new frame.
        from actors.face.musetalk_blend import box_alpha, paste

        if window is not None:
            # The blend square and its alpha move with the box; the part outside ``frame`` is
            # skipped by the paste, and the alpha is 0 there (paste_region).
            x, y = int(window[0]), int(window[1])
            box = tuple(int(v) for v in box)
            box = (box[0] - x, box[1] - y, box[2] - x, box[3] - y)
        if mask is not None:
            alpha = np.asarray(mask, np.float32) / np.float32(255.0)
        else:
            alpha = box_alpha(tuple(int(v) for v in box), float(self.blur_ratio))  # depends on the box only
        return paste(frame, generated, box, alpha)

    def paste_region(self, box, frame_w, frame_h) -> Box:
        from actors.face.musetalk_blend import alpha_bounds

        # Stored masks exist only with parsing weights (make_masker); without, the tighter bound.
        return alpha_bounds(box, frame_w, frame_h, self.blur_ratio, parsed=self.parsing_dir is not None)

    def describe(self) -> dict:
        return _describe(self)

    def make_masker(self):
        """Without parsing weights None (the feathered lower half depends on the box only); with
        them a function giving the frame's parsed blend alpha as uint8 (the reference blends with
        a uint8 mask too, so storing it loses nothing). Loads BiSeNet once per call."""
        if self.parsing_dir is None:
            return None
        from actors.face.musetalk_blend import blend_mask
        from actors.face.parsing_mask import FaceParser
        from actors.models.bisenet import load_bisenet

        parser = FaceParser(load_bisenet(self.parsing_dir))

        def mask(frame: np.ndarray, box: Sequence[int]) -> np.ndarray:
            alpha = blend_mask(frame, box, parser, self.parsing_mode, self.blur_ratio)
            return np.rint(alpha * 255.0).astype(np.uint8)

        return mask

    def mask_side(self, box) -> int:
        from actors.face.musetalk_blend import blend_square

        return 2 * blend_square(box)[1]
