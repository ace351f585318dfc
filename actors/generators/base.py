"""The one interface every lip-sync generator implements."""

from __future__ import annotations

from fractions import Fraction
from typing import Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class Generator(Protocol):
    """Turns face crops plus per-frame audio features into lip-synced face crops.

    * ``name``: short backend id ("wav2lip", "mouth_warp", ...).
    * ``crop_size``: side ``S`` of the square crops the generator works on.
    * ``prepare_audio(samples_16k, fps, n_frames)``: the backend's own audio front-end, called once per
      job on the whole track (some features depend on the whole track); returns per-output-frame
      features, first axis = output frame (Wav2Lip: ``float32[n,80,16]`` mel windows).
    * ``generate(faces, features)``: ``faces`` is ``uint8[B,S,S,3]`` BGR, each frame's padded face box
      (``compose.crop_box``) resized to ``S x S``; ``features`` the same frames' rows of
      ``prepare_audio``. Returns ``uint8[B,S,S,3]`` BGR crops in the same order, for
      ``compose.composite`` to blend back (only the lower half is expected to change). ``B`` may be 0.
    """

    name: str
    crop_size: int

    def prepare_audio(self, samples_16k: np.ndarray, fps: Fraction, n_frames: int) -> np.ndarray: ...

    def generate(self, faces: np.ndarray, features: np.ndarray) -> np.ndarray: ...
