"""The one interface every lip-sync generator implements."""

from __future__ import annotations

from fractions import Fraction
from typing import Protocol, runtime_checkable

import numpy as np

from actors.crop_geometry import CropGeometry


@runtime_checkable
class Generator(Protocol):
    """Turns face crops plus per-frame audio features into lip-synced face crops.

    * ``name``: short backend id ("wav2lip", "mouth_warp", ...).
    * ``crop_size``: side ``S`` of the square crops the generator works on.
    * ``prepare_audio(samples_16k, fps, n_frames)``: the backend's own audio front-end, called once per
      job on the whole track (some features depend on the whole track); returns per-output-frame
      features, first axis = output frame (Wav2Lip: ``float32[n,80,16]`` mel windows).
    * ``crop_geometry``: how its crops are cut out of a frame and pasted back
      (``actors/crop_geometry.py``); the avatar cache and the segment writer use it.
    * ``generate(faces, features)``: ``faces`` is ``uint8[B,S,S,3]`` BGR, each frame's crop as the
      ``crop_geometry`` cuts it; ``features`` the same frames' rows of ``prepare_audio``. Returns
      ``uint8[B,S,S,3]`` BGR crops in the same order, for ``crop_geometry.paste`` to blend back
      (only the lower half is expected to change). ``B`` may be 0.

    Optional (MuseTalk): ``encode_faces(crops) -> latents``, ``generate_from_latents(latents,
    features)`` and ``latent_key`` (names the latents a model makes). The per-frame latents then
    live in the avatar cache (``actors/avatar_latents.py``) and a job pays only the rest.
    """

    name: str
    crop_size: int
    crop_geometry: CropGeometry

    def prepare_audio(self, samples_16k: np.ndarray, fps: Fraction, n_frames: int) -> np.ndarray: ...

    def generate(self, faces: np.ndarray, features: np.ndarray) -> np.ndarray: ...
