"""End-to-end in-process rendering: real PyAV decode/encode, real face detection, real generators."""

from __future__ import annotations

import math
from pathlib import Path

import av
import numpy as np
import pytest

from actors.avatar import AvatarCache, AvatarParams
from actors.errors import NoFaceError
from actors.pipeline import LocalRenderer, RenderOptions
from serve_app.cli import main as cli_main
from tests.media import ASSETS, speech_like, synthetic_frames, write_audio, write_video

FPS = 25


def decode_video(path) -> list[np.ndarray]:
    with av.open(str(path)) as c:
        return [f.to_ndarray(format="bgr24") for f in c.decode(video=0)]


def audio_samples(path) -> tuple[int, int]:
    with av.open(str(path)) as c:
        s = c.streams.audio[0]
        return sum(f.samples for f in c.decode(s)), s.codec_context.name == "aac"


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return 99.0 if mse == 0 else 10 * math.log10(255 ** 2 / mse)


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    d = tmp_path_factory.mktemp("media")
    speech = speech_like(2.3)
    audio = write_audio(d / "speech.wav", speech)
    # Template: 1.2 s (30 frames) so the 2.3 s audio needs ping-pong.
    template = write_video(d / "template.mp4", synthetic_frames(30, 160, 120), FPS)
    return {"dir": d, "audio": audio, "template": template, "n_audio": len(speech)}


def test_render_covers_whole_audio_with_aac(media, tmp_path):
    out = tmp_path / "out.mp4"
    opts = RenderOptions(box=(40, 20, 120, 110), cache_dir=str(tmp_path / "cache"), segment_frames=16)
    summary = LocalRenderer(opts).render(str(media["audio"]), str(media["template"]), str(out))
    expected = math.ceil(media["n_audio"] / 16000 * FPS)
    frames = decode_video(out)
    assert summary.frames == expected == len(frames)
    with av.open(str(out)) as c:
        v = c.streams.video[0]
        assert v.average_rate == FPS and (v.width, v.height) == (160, 120)
        video_s = len(frames) / FPS
        assert abs(video_s - media["n_audio"] / 16000) <= 1 / FPS
    n, is_aac = audio_samples(out)
    assert is_aac and abs(n - media["n_audio"]) <= 1024
    assert out.read_bytes().find(b"moov") < out.read_bytes().find(b"mdat")  # +faststart


def test_pingpong_uses_template_frames_in_order(media, tmp_path):
    """Outside the face box the output is the template; ping-pong order is visible there."""
    out = tmp_path / "out.mp4"
    opts = RenderOptions(box=(40, 20, 120, 110), cache_dir=str(tmp_path / "cache"))
    LocalRenderer(opts).render(str(media["audio"]), str(media["template"]), str(out))
    tpl = decode_video(media["template"])
    got = decode_video(out)
    for i, src in [(0, 0), (29, 29), (30, 28), (57, 1)]:
        assert psnr(got[i][:15], tpl[src][:15]) > 35, (i, src)  # top band is far from the face box
        other = src + 3 if src + 3 < 30 else src - 3
        assert psnr(got[i][:15], tpl[other][:15]) < psnr(got[i][:15], tpl[src][:15])


def test_no_face_frames_pass_through_unchanged(tmp_path):
    """Template with the real demo face in the first 12 frames and an empty scene for 1.2 s after:
    longer than the 1 s tracking-gap span, so the face is really gone there."""
    with av.open(str(ASSETS / "demo_template.mp4")) as c:
        face_frames = [f.to_ndarray(format="bgr24") for _, f in zip(range(12), c.decode(video=0))]
    h, w = face_frames[0].shape[:2]
    blank = [np.full((h, w, 3), 90 + 3 * i, np.uint8) for i in range(30)]
    template = write_video(tmp_path / "half.mp4", face_frames + blank, FPS)
    audio = write_audio(tmp_path / "a.wav", speech_like(42 / FPS, seed=3))
    out = tmp_path / "out.mp4"
    summary = LocalRenderer(RenderOptions(cache_dir=str(tmp_path / "cache"))).render(str(audio), str(template), str(out))
    assert 0 < summary.template_faces_found < 42
    assert summary.frames_without_face >= 8
    tpl, got = decode_video(template), decode_video(out)
    for i in range(16, 24):  # no face there: only encoding loss separates output from template
        assert psnr(got[i], tpl[i]) > 38


def test_avatar_cache_is_reused(media, tmp_path):
    cache = AvatarCache(tmp_path / "cache")
    params = AvatarParams(box=(40, 20, 120, 110))
    a = cache.get_or_build(media["template"], params)
    b = cache.get_or_build(media["template"], params)
    assert a.key == b.key and a.directory == b.directory
    assert cache.key_for(media["template"], AvatarParams(box=(0, 0, 50, 50))) != a.key
    assert len(list(Path(tmp_path / "cache").iterdir())) == 1
    assert a.crops().shape == (30, 160, 160, 3)


def test_no_face_anywhere_is_a_typed_error(tmp_path):
    template = write_video(tmp_path / "flat.mp4", [np.full((96, 96, 3), 120, np.uint8)] * 5, FPS)
    audio = write_audio(tmp_path / "a.wav", speech_like(0.5))
    with pytest.raises(NoFaceError) as err:
        LocalRenderer(RenderOptions(cache_dir=str(tmp_path / "c"))).render(str(audio), str(template), str(tmp_path / "o.mp4"))
    assert "flat.mp4" in str(err.value)


def test_wav2lip_backend_renders_with_a_random_checkpoint(media, tmp_path):
    from actors.models.wav2lip import save_random_checkpoint

    ckpt = save_random_checkpoint(tmp_path / "w2l.pth") or tmp_path / "w2l.pth"
    out = tmp_path / "out.mp4"
    opts = RenderOptions(backend="wav2lip", checkpoint=str(ckpt), box=(40, 20, 120, 110),
                         cache_dir=str(tmp_path / "cache"))
    summary = LocalRenderer(opts).render(str(media["audio"]), str(media["template"]), str(out))
    assert len(decode_video(out)) == summary.frames


def test_cli_render_and_bad_input(media, tmp_path, capsys):
    out = tmp_path / "cli.mp4"
    rc = cli_main(["render", "--audio", str(media["audio"]), "--video", str(media["template"]), "--out", str(out),
                   "--box", "40", "20", "120", "110", "--loop", "--cache-dir", str(tmp_path / "c"), "--quiet"])
    assert rc == 0 and out.exists()
    assert "frames" in capsys.readouterr().out
    rc = cli_main(["render", "--audio", str(tmp_path / "missing.wav"), "--video", str(media["template"]),
                   "--out", str(tmp_path / "x.mp4"), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "missing.wav" in err[0] and "unreadable_file" in err[0]
