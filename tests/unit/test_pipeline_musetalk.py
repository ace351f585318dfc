"""``lipserve render --backend musetalk`` end to end on a reduced random-init MuseTalk (public
layout, written by ``random_weights``; nothing downloaded): real decode, crop geometry, cached
latents, paste-back and encode."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest

from actors.crop_geometry import MuseTalkGeometry
from actors.generators import make_generator
from actors.models.musetalk.random_weights import write_random_models
from actors.pipeline import LocalRenderer, RenderOptions
from serve_app.cli import main as cli_main
from tests.media import speech_like, synthetic_frames, write_audio, write_video
from tests.unit.test_pipeline import decode_video, psnr

BOX = (40, 20, 120, 110)


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    return write_random_models(tmp_path_factory.mktemp("musetalk_models"), reduced=True)


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    d = tmp_path_factory.mktemp("media")
    speech = speech_like(1.5, seed=4)
    return {"audio": write_audio(d / "speech.wav", speech), "n_audio": len(speech),
            "t25": write_video(d / "t25.mp4", synthetic_frames(20, 160, 120), 25),
            "t30": write_video(d / "t30.mp4", synthetic_frames(24, 160, 120, seed=1), 30)}


def test_cli_render_musetalk(models_dir, media, tmp_path, capsys):
    out, cache = tmp_path / "out.mp4", tmp_path / "cache"
    rc = cli_main(["render", "--audio", str(media["audio"]), "--video", str(media["t25"]), "--out", str(out),
                        "--backend", "musetalk", "--checkpoint", str(models_dir), "--box", *map(str, BOX),
                        "--cache-dir", str(cache), "--segment-frames", "16", "--batch-size", "4", "--quiet"])
    assert rc == 0, capsys.readouterr().err
    frames = decode_video(out)
    assert len(frames) == math.ceil(media["n_audio"] / 16000 * 25)
    (avatar_dir,) = [p for p in cache.iterdir() if not p.name.startswith(".")]
    crops = np.load(avatar_dir / "crops.npy", mmap_mode="r")
    assert crops.shape == (20, 256, 256, 3)  # MuseTalk's geometry, not the default 160 px square
    (latents,) = avatar_dir.glob("latents-*.npy")  # the reference latents, cached once per template
    assert np.load(latents, mmap_mode="r").shape == (20, 8, 32, 32)
    template = decode_video(media["t25"])
    box = np.load(avatar_dir / "boxes.npy")[0]
    mid = (int(box[1]) + int(box[3])) // 2  # nothing above the blend square's middle row changes
    for i in (0, 7, 19):
        assert psnr(frames[i][:mid - 2], template[i][:mid - 2]) > 38
    mouth = slice(mid + 4, int(box[3]) - 8), slice(int(box[0]) + 8, int(box[2]) - 8)
    assert max(np.abs(frames[i][mouth].astype(int) - template[i][mouth]).mean() for i in (0, 7, 19)) > 3
    assert "wrote" in capsys.readouterr().out


class _PlainMuseTalk:
    """The same model without the latent path: every frame is VAE-encoded in ``generate``."""

    def __init__(self, gen):
        self._gen = gen
        self.name, self.crop_size, self.crop_geometry = gen.name, gen.crop_size, gen.crop_geometry

    def prepare_audio(self, *args):
        return self._gen.prepare_audio(*args)

    def generate(self, faces, features):
        return self._gen.generate(faces, features)


def test_cached_latents_path_matches_the_plain_path_at_30_fps(models_dir, media, tmp_path):
    gen = make_generator("musetalk", str(models_dir), batch_size=4)
    assert isinstance(gen.crop_geometry, MuseTalkGeometry)
    outputs = {}
    for label, g in (("latents", gen), ("plain", _PlainMuseTalk(gen))):
        opts = RenderOptions(box=BOX, cache_dir=str(tmp_path / f"cache-{label}"), segment_frames=20)
        summary = LocalRenderer(opts, generator=g).render(str(media["audio"]), str(media["t30"]),
                                                          str(tmp_path / f"{label}.mp4"))
        assert summary.fps == 30 and summary.frames == math.ceil(Fraction(media["n_audio"], 16000) * 30)
        outputs[label] = decode_video(tmp_path / f"{label}.mp4")
    assert list((tmp_path / "cache-latents").glob("*/latents-*.npy"))
    assert not list((tmp_path / "cache-plain").glob("*/latents-*.npy"))
    assert len(outputs["latents"]) == len(outputs["plain"]) == summary.frames
    assert min(psnr(a, b) for a, b in zip(outputs["latents"], outputs["plain"])) > 45


def test_face_parsing_masks_are_cached_and_used(models_dir, media, tmp_path):
    import shutil

    from actors.avatar import AvatarCache
    from actors.face.musetalk_blend import blend_mask
    from actors.models.bisenet import write_random_bisenet
    from actors.models.musetalk.files import FACE_PARSING_WEIGHTS
    from actors.pipeline import avatar_params_for

    with_parser = tmp_path / "models"
    shutil.copytree(models_dir, with_parser)
    write_random_bisenet(with_parser / FACE_PARSING_WEIGHTS)
    gen = make_generator("musetalk", str(with_parser), batch_size=4)
    assert gen.crop_geometry.parsing_dir == str(with_parser.resolve())
    opts = RenderOptions(box=BOX, cache_dir=str(tmp_path / "cache"), segment_frames=20)
    avatar = AvatarCache(opts.cache_dir).get_or_build(media["t25"], avatar_params_for(opts, gen.crop_geometry))
    plain = AvatarCache(tmp_path / "cache-plain").get_or_build(
        media["t25"], avatar_params_for(opts, make_generator("musetalk", str(models_dir)).crop_geometry))
    assert avatar.key != plain.key and plain.paste_masks() is None
    frame = decode_video(media["t25"])[3]
    box = avatar.boxes()[3]
    stored = avatar.paste_masks()[3]
    # the stored mask is the parsed blend alpha of that frame, not the box-only feather
    assert stored.shape == blend_mask(frame, box).shape
    assert not np.array_equal(stored, np.rint(blend_mask(frame, box) * 255).astype(np.uint8))
    summary = LocalRenderer(opts, generator=gen).render(str(media["audio"]), str(media["t25"]), str(tmp_path / "o.mp4"))
    assert summary.frames == len(decode_video(tmp_path / "o.mp4"))
