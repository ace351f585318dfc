"""Avatar cache: the per-template work, done once and reused by every later job.

Preparing a template (probe, face tracking over every frame, face crops at the generator's size) is
the expensive part of a job that does not depend on the audio. It is keyed by the template's content
hash plus the preprocessing parameters, written to disk atomically (build in a temp dir, then
rename), and opened read-only (crops are memory-mapped) by later jobs, other actors and job retries.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np

from actors.crop_geometry import CropGeometry, PaddedBoxGeometry
from actors.errors import InvalidParameterError, NoFaceError
from actors.face.detector import make_detector
from actors.face.tracking import boxes_from_override, track_faces
from actors.limits import MediaLimits
from actors.media.digest import file_digest
from actors.media.color import i420_to_bgr
from actors.media.template import TemplateInfo, iter_frames, probe_template

# Bump when the on-disk layout or the preprocessing changes, so stale caches are not reused.
CACHE_VERSION = 2
FRAMES_FILE = "frames_i420.npy"
# Decoded template frames kept with the avatar when they fit in this many bytes (8-bit yuv420p,
# BT.601 limited range only: the writer's YUV paste path). Every job on the avatar then reads its
# frames instead of decoding them (~0.9 ms of CPU per 576x768 frame; a 10 s 576x768 template is
# 166 MB). 0 disables; configurable (``writer.frame_cache_mib``).
DEFAULT_FRAME_CACHE_BYTES = 512 * 2**20


@dataclass(frozen=True)
class AvatarParams:
    """Everything besides the template bytes that changes the cached result.

    ``geometry`` is the generator's declared crop geometry (``actors/crop_geometry.py``); when it
    is None, ``crop_size`` and ``pads`` describe the default padded-box geometry.
    """

    crop_size: int = 160
    pads: tuple[int, int, int, int] = (0, 10, 0, 0)  # top, bottom, left, right (Wav2Lip's default)
    detect_every: int = 5
    smooth_window: int = 5
    box: tuple[int, int, int, int] | None = None  # user override: x1 y1 x2 y2
    detector_model: str | None = None  # path of an ONNX detector; None = embedded Haar cascade
    # Tracking gaps up to this long get interpolated / held boxes (actors/face/tracking.py).
    max_gap_s: float = 1.0
    geometry: CropGeometry | None = None

    def crop_geometry(self) -> CropGeometry:
        return self.geometry if self.geometry is not None else PaddedBoxGeometry(self.crop_size, self.pads)

    def fingerprint(self) -> str:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "geometry"}
        geometry = self.crop_geometry()
        d["geometry"] = geometry.describe()
        d["crop_size"] = geometry.crop_size
        return json.dumps(d, sort_keys=True, default=list)


@dataclass
class Avatar:
    """A prepared template. Cheap to pickle: arrays are loaded lazily from ``directory``."""

    key: str
    directory: str
    info: TemplateInfo
    crop_size: int
    faces_found: int
    geometry: CropGeometry = field(default_factory=PaddedBoxGeometry)

    @property
    def n_frames(self) -> int:
        return self.info.n_frames

    def boxes(self) -> np.ndarray:
        """int32[n, 4] padded crop boxes (x1, y1, x2, y2) in upright frame coordinates."""
        return np.load(os.path.join(self.directory, "boxes.npy"))

    def present(self) -> np.ndarray:
        """bool[n]: whether the template frame has a face (frames without pass through unchanged)."""
        return np.load(os.path.join(self.directory, "present.npy"))

    def crops(self) -> np.ndarray:
        """uint8[n, S, S, 3] face crops, memory-mapped read-only (zeros where no face)."""
        return np.load(os.path.join(self.directory, "crops.npy"), mmap_mode="r")

    def paste_masks(self) -> "PasteMasks | None":
        """The stored per-frame paste masks, for geometries whose mask depends on the frame
        (``CropGeometry.make_masker``); None for the others."""
        offsets_path = os.path.join(self.directory, "mask_offsets.npy")
        if not os.path.exists(offsets_path):
            return None
        return PasteMasks(np.load(offsets_path), np.load(os.path.join(self.directory, "masks.npy"), mmap_mode="r"))

    def frames_i420(self) -> np.ndarray | None:
        """uint8[n, h*3/2, w]: the upright template frames as decoded I420, memory-mapped read-only,
        when the avatar cached them (see :class:`AvatarCache`); None otherwise (decode the template)."""
        path = os.path.join(self.directory, FRAMES_FILE)
        return np.load(path, mmap_mode="r") if os.path.exists(path) else None

    def latents(self, name: str) -> np.ndarray:
        """A backend's cached per-frame reference latents (``actors/avatar_latents.py``), memory-mapped."""
        return np.load(os.path.join(self.directory, name), mmap_mode="r")


@dataclass
class PasteMasks:
    """Ragged uint8 squares, one per template frame (empty where there is no face)."""

    offsets: np.ndarray  # int64[n + 1]
    flat: np.ndarray  # uint8[offsets[-1]], memory-mapped

    def __getitem__(self, i: int) -> np.ndarray:
        lo, hi = int(self.offsets[i]), int(self.offsets[i + 1])
        side = int(round((hi - lo) ** 0.5))
        return np.asarray(self.flat[lo:hi]).reshape(side, side)


def _info_to_json(info: TemplateInfo) -> dict:
    d = dataclasses.asdict(info)
    d["fps"] = [info.fps.numerator, info.fps.denominator]
    d["path"] = str(info.path)
    return d


def _info_from_json(d: dict, path: str) -> TemplateInfo:
    d = dict(d)
    d["fps"] = Fraction(*d["fps"])
    d["path"] = path
    return TemplateInfo(**d)


class AvatarCache:
    """Builds and finds prepared templates under ``root``."""

    def __init__(self, root: str | os.PathLike, limits: MediaLimits | None = None,
                 frame_cache_bytes: int = DEFAULT_FRAME_CACHE_BYTES):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.limits = limits or MediaLimits()
        self.frame_cache_bytes = int(frame_cache_bytes)

    def key_for(self, video_path: str | os.PathLike, params: AvatarParams, digest: str | None = None) -> str:
        digest = digest or file_digest(video_path)
        material = f"v{CACHE_VERSION}|{digest}|{params.fingerprint()}"
        return hashlib.sha256(material.encode()).hexdigest()[:32]

    def get(self, key: str, video_path: str | os.PathLike, params: AvatarParams | None = None) -> Avatar | None:
        directory = self.root / key
        meta_path = directory / "meta.json"
        if not meta_path.exists():
            return None
        meta = json.loads(meta_path.read_text())
        try:  # last use, what retention's avatar_ttl_s is measured from
            os.utime(directory)
        except OSError:
            pass
        return Avatar(
            key=key,
            directory=str(directory),
            info=_info_from_json(meta["info"], str(video_path)),
            crop_size=meta["crop_size"],
            faces_found=meta["faces_found"],
            geometry=(params or AvatarParams(crop_size=meta["crop_size"])).crop_geometry(),
        )

    def get_or_build(self, video_path: str | os.PathLike, params: AvatarParams, digest: str | None = None) -> Avatar:
        key = self.key_for(video_path, params, digest)
        return self.get(key, video_path, params) or self._build(key, Path(video_path), params)

    def _build(self, key: str, video_path: Path, params: AvatarParams) -> Avatar:
        geometry = params.crop_geometry()
        if params.max_gap_s < 0:
            raise InvalidParameterError(f"max_gap_s must be >= 0, got {params.max_gap_s}")
        info = probe_template(video_path, self.limits)
        if params.box is not None:
            track = boxes_from_override(params.box, info.n_frames)
        else:
            track = track_faces(
                (frame for _, frame in iter_frames(video_path)),
                make_detector(params.detector_model),
                detect_every=params.detect_every,
                smooth_window=params.smooth_window,
                max_gap=int(params.max_gap_s * info.fps),
                path=str(video_path),
            )
        track_boxes, present, marks = track.boxes, track.present, track.landmarks
        # The container may announce more frames than it decodes; trust what the tracker saw.
        n = min(len(present), info.n_frames)
        if n == 0 or not present[:n].any():
            raise NoFaceError(
                "no face found in any frame of the template (frontal face expected; pass --box X1 Y1 X2 Y2 "
                "to set the face region by hand)",
                path=str(video_path),
            )
        if n != info.n_frames:
            info = dataclasses.replace(info, n_frames=n, duration_s=float(n / info.fps))

        tmp = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=self.root))
        try:
            S = geometry.crop_size
            boxes = np.zeros((n, 4), np.int32)
            for i in np.flatnonzero(present[:n]):
                boxes[i] = geometry.crop_box(track_boxes[i], info.width, info.height,
                                             None if marks is None else marks[i])
            crops = np.lib.format.open_memmap(tmp / "crops.npy", mode="w+", dtype=np.uint8, shape=(n, S, S, 3))
            masker = geometry.make_masker()
            if masker is not None:  # frame-dependent paste masks: ragged, one square per frame
                sides = np.array([geometry.mask_side(b) if present[i] else 0 for i, b in enumerate(boxes)], np.int64)
                offsets = np.concatenate([[0], np.cumsum(sides * sides)])
                np.save(tmp / "mask_offsets.npy", offsets)
                masks = np.lib.format.open_memmap(tmp / "masks.npy", mode="w+", dtype=np.uint8,
                                                  shape=(int(offsets[-1]),))
            frame_bytes = info.width * info.height * 3 // 2
            keep = (info.width % 2 == 0 and info.height % 2 == 0 and n * frame_bytes <= self.frame_cache_bytes)
            frames = None
            if keep:
                frames = np.lib.format.open_memmap(tmp / FRAMES_FILE, mode="w+", dtype=np.uint8,
                                                   shape=(n, info.height * 3 // 2, info.width))  # upright size
            for i, frame in iter_frames(video_path, stop=n, keep_yuv420p=keep):
                if i >= n:
                    break
                if frame.ndim == 2:  # upright I420 (8-bit yuv420p, BT.601 limited): cache it as is
                    if frames is not None:
                        frames[i] = frame
                    frame = i420_to_bgr(frame)
                elif frames is not None:  # a frame in another format: the writer decodes this template
                    del frames
                    frames = None
                    os.unlink(tmp / FRAMES_FILE)
                if present[i]:
                    crops[i] = geometry.extract(frame, boxes[i])
                    if masker is not None:
                        masks[offsets[i]:offsets[i + 1]] = masker(frame, boxes[i]).reshape(-1)
            crops.flush()
            del crops
            if frames is not None:
                frames.flush()
                del frames
            if masker is not None:
                masks.flush()
                del masks
            np.save(tmp / "boxes.npy", boxes)
            np.save(tmp / "present.npy", np.asarray(present[:n], bool))
            faces_found = int(np.count_nonzero(present[:n]))
            meta = {"info": _info_to_json(info), "crop_size": S, "faces_found": faces_found,
                    "params": json.loads(params.fingerprint()), "version": CACHE_VERSION}
            (tmp / "meta.json").write_text(json.dumps(meta))
            try:
                os.rename(tmp, self.root / key)
            except OSError:
                # Another job built the same avatar first: theirs is identical, use it.
                shutil.rmtree(tmp, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        avatar = self.get(key, video_path, params)
        assert avatar is not None
        return avatar
