"""The job's AAC track: encoded once (actors/media/audio_track.py), then copied by the final join.

A join that copies the track must give the very file a join that encodes the AAC in place gives,
for every input the service takes; the track is kept across attempts; bad audio is a typed error
that names the file."""

from __future__ import annotations

from fractions import Fraction

import av
import numpy as np
import pytest

from actors.errors import CancelledError, EmptyAudioError, NoAudioStreamError, UnreadableFileError
from actors.media.audio_track import AUDIO_TRACK_NAME, write_audio_track
from actors.media.encode import encode_segment
from actors.media.join import join_segments
from actors.segment_writer import SegmentWriter
from actors.stop_token import StopToken
from tests.media import speech_like, synthetic_frames, write_audio, write_video

FPS = Fraction(25)


@pytest.fixture(scope="module")
def segments(tmp_path_factory):
    d = tmp_path_factory.mktemp("segs")
    frames = list(synthetic_frames(30, 64, 48))
    paths = []
    for k, (a, b) in enumerate([(0, 12), (12, 13), (13, 30)]):
        p = d / f"seg_{k:05d}.mp4"
        encode_segment(frames[a:b], p, FPS, 64, 48)
        paths.append(p)
    return paths


def _stereo_44k(path):
    t = np.arange(int(1.1 * 44100)) / 44100
    data = np.stack([np.sin(2 * np.pi * 220 * t), 0.5 * np.sin(2 * np.pi * 330 * t)]).astype(np.float32)
    with av.open(str(path), "w") as out:
        s = out.add_stream("pcm_s16le", rate=44100, layout="stereo")
        frame = av.AudioFrame.from_ndarray((data * 20000).astype(np.int16).T.reshape(1, -1).copy(),
                                           format="s16", layout="stereo")
        frame.sample_rate = 44100
        for packet in s.encode(frame):
            out.mux(packet)
        for packet in s.encode(None):
            out.mux(packet)
    return path


@pytest.mark.parametrize("kind", ["wav16k", "m4a", "stereo44k", "odd_rate"])
def test_a_join_that_copies_the_track_writes_the_same_file(tmp_path, segments, kind):
    if kind == "wav16k":
        audio = write_audio(tmp_path / "a.wav", speech_like(1.3, seed=1))
    elif kind == "m4a":
        audio = write_audio(tmp_path / "a.m4a", speech_like(0.9, seed=2))
    elif kind == "stereo44k":
        audio = _stereo_44k(tmp_path / "a.wav")
    else:  # no AAC rate: the track is at the nearest one above, like the in-place encode
        audio = write_audio(tmp_path / "a.wav", speech_like(1.0, seed=3), sr=17000)
    track = write_audio_track(str(audio), tmp_path / AUDIO_TRACK_NAME)
    join_segments(segments, audio, tmp_path / "encoded.mp4", FPS)
    join_segments(segments, track, tmp_path / "copied.mp4", FPS, copy_audio=True)
    copied, encoded = _packets(tmp_path / "copied.mp4"), _packets(tmp_path / "encoded.mp4")
    assert copied == encoded and len(copied["audio"]) > 10 and len(copied["video"]) == 30
    # Same layout too; only the AAC header's peak-bitrate field may differ (the encoder reports its
    # own cap, a copy the measured peak).
    assert (tmp_path / "copied.mp4").stat().st_size == (tmp_path / "encoded.mp4").stat().st_size
    with av.open(str(tmp_path / "copied.mp4")) as c:
        assert c.streams.audio[0].codec_context.name == "aac"


def _packets(path) -> dict[str, list[tuple]]:
    """Every packet of both streams: payload, timestamps, duration, keyframe flag."""
    out: dict[str, list[tuple]] = {"audio": [], "video": []}
    with av.open(str(path)) as c:
        for packet in c.demux():
            if packet.size:
                out[packet.stream.type].append((bytes(packet), packet.pts, packet.dts, packet.duration,
                                                packet.is_keyframe, packet.stream.time_base))
    return out


def test_the_track_is_kept_once_written(tmp_path):
    """A retry of the job reuses the track an earlier attempt wrote (same input, same bytes)."""
    audio = write_audio(tmp_path / "a.wav", speech_like(0.5))
    track = write_audio_track(str(audio), tmp_path / AUDIO_TRACK_NAME)
    first = (tmp_path / AUDIO_TRACK_NAME).stat().st_mtime_ns
    assert write_audio_track(str(audio), tmp_path / AUDIO_TRACK_NAME) == track
    assert (tmp_path / AUDIO_TRACK_NAME).stat().st_mtime_ns == first
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_bad_audio_is_a_typed_error_naming_the_file(tmp_path):
    silent_video = write_video(tmp_path / "clip.mp4", synthetic_frames(5, 32, 32), 25)
    garbage = tmp_path / "noise.wav"
    garbage.write_bytes(b"RIFF" + bytes(range(256)) * 8)
    empty = write_audio(tmp_path / "empty.wav", np.zeros(0, np.float32))
    for path, error in [(silent_video, NoAudioStreamError), (garbage, UnreadableFileError),
                        (empty, (EmptyAudioError, UnreadableFileError))]:
        with pytest.raises(error) as info:
            write_audio_track(str(path), tmp_path / f"{path.stem}.m4a")
        assert path.name in info.value.message
        assert not (tmp_path / f"{path.stem}.m4a").exists()


def test_a_stopped_attempt_encodes_no_track(tmp_path):
    audio = write_audio(tmp_path / "a.wav", speech_like(0.5))
    stop = StopToken.for_attempt(tmp_path)
    stop.set()
    with pytest.raises(CancelledError):
        SegmentWriter().encode_audio_track(str(audio), tmp_path / AUDIO_TRACK_NAME, stop=stop)
    assert not (tmp_path / AUDIO_TRACK_NAME).exists()


def test_an_unreadable_track_is_an_internal_error_without_its_path(tmp_path, segments):
    """The track is the service's own file: a broken one is not blamed on the client's audio, and
    the message shows no server path."""
    from actors.errors import InternalError

    audio = write_audio(tmp_path / "a.wav", speech_like(0.8, seed=5))
    track = write_audio_track(str(audio), tmp_path / AUDIO_TRACK_NAME)
    broken = tmp_path / "broken.m4a"
    broken.write_bytes(open(track, "rb").read()[:40])  # cut inside the MP4 header
    with pytest.raises(InternalError) as info:
        join_segments(segments, broken, tmp_path / "out.mp4", FPS, copy_audio=True)
    assert str(tmp_path) not in info.value.message and "AAC track" in info.value.message
    assert not (tmp_path / "out.mp4").exists()
