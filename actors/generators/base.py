"""The one interface every lip-sync generator implements."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class Generator(Protocol):
    """Turns face crops plus audio windows into lip-synced face crops.

    * ``name``: short backend id ("wav2lip", "mouth_warp", ...).
    * ``crop_size``: side ``S`` of the square crops the generator works on.
    * ``generate(faces, mels)``:
      ``faces`` is ``uint8[B,S,S,3]`` BGR: each frame's padded face box (``compose.crop_box``) resized
      to ``S x S``; ``mels`` is ``float32[B,80,16]``: the 16-column mel window of the same frame
      (``audio.mel_windows``). Returns ``uint8[B,S,S,3]`` BGR crops in the same order, for
      ``compose.composite`` to blend back (only the lower half is expected to change). ``B`` may be 0.
    """

    name: str
    crop_size: int

    def generate(self, faces: np.ndarray, mels: np.ndarray) -> np.ndarray: ...
