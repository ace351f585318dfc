"""Per-frame reference latents in the avatar cache, for backends that expose ``encode_faces``.

MuseTalk VAE-encodes every crop (its masked lower half and the whole crop) before the UNet runs.
That only depends on the template frame, so, as MuseTalk's real-time mode does, it is done once per
template and model: ``ensure_latents`` runs ``encode_faces`` over the avatar's crops (in the
process that owns the model, i.e. the generator actor) and stores the result next to the crops as
``latents-<latent_key>.npy``, written to a temp file and renamed, so concurrent jobs and retries
only ever see a complete file. A job then feeds the cached rows to ``generate_from_latents`` and
pays only the UNet + VAE decode per frame. Frames without a face keep zero latents (never used).
"""

from __future__ import annotations

import os
import tempfile

import numpy as np

from actors.avatar import Avatar

CHUNK_FRAMES = 64  # frames encoded per call: bounded memory on a long template


def latents_name(generator) -> str | None:
    """The cache file name of ``generator``'s latents, or None when it has no latent path."""
    if not (hasattr(generator, "encode_faces") and hasattr(generator, "generate_from_latents")):
        return None
    return f"latents-{getattr(generator, 'latent_key', generator.name)}.npy"


def ensure_latents(generator, avatar: Avatar) -> str | None:
    """The name of the avatar's latents file for ``generator`` (computed now when missing), or None."""
    name = latents_name(generator)
    if name is None:
        return None
    path = os.path.join(avatar.directory, name)
    if os.path.exists(path):
        return name
    crops = avatar.crops()
    present = np.flatnonzero(avatar.present()[: len(crops)])
    first = generator.encode_faces(np.ascontiguousarray(crops[present[:CHUNK_FRAMES]]))  # gives shape + dtype
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".npy", dir=avatar.directory)
    os.close(fd)
    try:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=first.dtype, shape=(len(crops), *first.shape[1:]))
        out[present[:CHUNK_FRAMES]] = first
        for lo in range(CHUNK_FRAMES, len(present), CHUNK_FRAMES):
            idx = present[lo : lo + CHUNK_FRAMES]
            out[idx] = generator.encode_faces(np.ascontiguousarray(crops[idx]))
        out.flush()
        del out
        os.replace(tmp, path)  # an identical file from a concurrent job may be replaced: harmless
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return name
