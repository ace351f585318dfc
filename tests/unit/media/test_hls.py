"""The live HLS stream: fMP4 segments cut from the job's encoded segments (no re-encode), the same
video and audio packets as the final MP4 at the same frame boundaries, an EVENT playlist that only
lists a contiguous prefix and ends with #EXT-X-ENDLIST, and a failure that never fails the job."""

from __future__ import annotations

import asyncio
import math
import struct
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from actors.live_hls import INCIDENT, LiveHls
from actors.media import hls
from actors.pipeline import LocalRenderer, RenderOptions
from actors.plan import Segment
from tests.media import speech_like, synthetic_frames, write_audio, write_video

FPS = 25
BOX = (40, 20, 120, 110)


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    """One local render (3.3 s of audio, 16-frame segments) with its live stream."""
    d = tmp_path_factory.mktemp("hls")
    audio = write_audio(d / "speech.wav", speech_like(3.3, seed=2))
    template = write_video(d / "template.mp4", synthetic_frames(30, 160, 120), FPS)
    opts = RenderOptions(box=BOX, cache_dir=str(d / "cache"), segment_frames=16)
    summary = LocalRenderer(opts).render(str(audio), str(template), str(d / "out.mp4"), hls_dir=str(d / "live"))
    return {"dir": d, "live": d / "live", "out": d / "out.mp4", "summary": summary}


def _track():
    """The driver's AAC track, already encoded (these tests fake the media work)."""
    async def done() -> str:
        return "audio.m4a"
    return done()


def packets(path: Path, kind: str) -> list[av.Packet]:
    with av.open(str(path)) as c:
        stream = c.streams.video[0] if kind == "video" else c.streams.audio[0]
        return [(bytes(p), p.pts, p.time_base, p.is_keyframe) for p in c.demux(stream) if p.size]


def joined_stream(live: Path, playlist: str, out: Path) -> Path:
    """init.mp4 + every listed segment, in playlist order: what a player's buffer holds."""
    names = [line for line in playlist.splitlines() if line and not line.startswith("#")]
    out.write_bytes((live / hls.INIT).read_bytes() + b"".join((live / n).read_bytes() for n in names))
    return out


def test_playlist_is_a_complete_event_playlist(rendered):
    text = (rendered["live"] / hls.PLAYLIST).read_text()
    lines = text.splitlines()
    assert lines[0] == "#EXTM3U" and "#EXT-X-PLAYLIST-TYPE:EVENT" in lines
    assert '#EXT-X-MAP:URI="init.mp4"' in lines and lines[-1] == "#EXT-X-ENDLIST"
    frames = rendered["summary"].frames
    n_segments = math.ceil(frames / 16)
    uris = [line for line in lines if line and not line.startswith("#")]
    assert uris == [hls.segment_name(i) for i in range(n_segments)]
    durations = [float(line[8:].rstrip(",")) for line in lines if line.startswith("#EXTINF:")]
    assert durations[:-1] == [16 / FPS] * (n_segments - 1)
    assert sum(durations) == pytest.approx(frames / FPS)
    target = int(next(line for line in lines if line.startswith("#EXT-X-TARGETDURATION:")).split(":")[1])
    assert target >= max(durations) and target == math.ceil(max(durations))
    assert rendered["summary"].first_playable_s is not None and rendered["summary"].first_playable_s > 0


def test_segments_carry_the_final_mp4s_packets_at_its_boundaries(rendered, tmp_path):
    live = rendered["live"]
    stream = joined_stream(live, (live / hls.PLAYLIST).read_text(), tmp_path / "stream.mp4")
    video, final_video = packets(stream, "video"), packets(rendered["out"], "video")
    audio, final_audio = packets(stream, "audio"), packets(rendered["out"], "audio")
    assert [p[0] for p in video] == [p[0] for p in final_video], "the live video was re-encoded or reordered"
    assert [p[0] for p in audio] == [p[0] for p in final_audio], "the live audio differs from the MP4's"
    # Every segment starts on a keyframe, with its own audio, and each has one fragment.
    tb = Fraction(1, FPS)
    priming = -final_audio[0][1] * final_audio[0][2]  # the MP4 starts its priming packet before 0
    assert priming > 0
    for i in range(len(list(live.glob("seg_*.m4s")))):
        seg = live / hls.segment_name(i)
        one = tmp_path / f"one{i}.mp4"
        one.write_bytes((live / hls.INIT).read_bytes() + seg.read_bytes())
        v, a = packets(one, "video"), packets(one, "audio")
        assert v[0][3], f"segment {i} does not start on a keyframe"
        # Frame 16 i plays at 16 i / fps after the stream's (priming-shifted) origin, as in the MP4.
        assert v[0][1] * v[0][2] == priming + 16 * i * tb
        assert a, f"segment {i} has no audio"
        start = a[0][1] * a[0][2] - priming  # MP4 time of the segment's first audio packet
        assert 16 * i * tb <= start + priming and start < 16 * i * tb + Fraction(1024, 16000)
        data = seg.read_bytes()
        assert data[4:8] == b"styp" and data.count(b"moof") == 1
        tfdt = data.find(b"tfdt")
        assert data[tfdt + 4] == 1 and struct.unpack(">Q", data[tfdt + 8:tfdt + 16])[0] > 0 or i == 0


def test_decoded_stream_matches_the_final_mp4(rendered, tmp_path):
    live = rendered["live"]
    stream = joined_stream(live, (live / hls.PLAYLIST).read_text(), tmp_path / "stream.mp4")
    with av.open(str(stream)) as a, av.open(str(rendered["out"])) as b:
        fa = [f.to_ndarray(format="gray") for f in a.decode(video=0)]
        fb = [f.to_ndarray(format="gray") for f in b.decode(video=0)]
    assert len(fa) == len(fb) == rendered["summary"].frames
    assert all(np.array_equal(x, y) for x, y in zip(fa, fb))
    with av.open(str(stream)) as a:
        samples = sum(f.samples for f in a.decode(audio=0))
    assert samples >= 3.3 * 16000  # every input sample (plus the encoder's priming and padding)


def test_names_the_route_serves():
    assert hls.is_media_name("init.mp4") and hls.is_media_name("seg_00042.m4s")
    for bad in ("index.m3u8", "audio.mp4", "../x.m4s", "seg_0042.m4s", "seg_abcde.m4s", "seg_00042.m4s/x"):
        assert not hls.is_media_name(bad), bad


def _plan(n: int, frames: int = 10):
    class Plan:
        fps = Fraction(FPS)
        segments = [Segment(i, i * frames, (i + 1) * frames) for i in range(n)]
    return Plan()


def test_playlist_lists_only_the_contiguous_prefix(tmp_path):
    """Segments finishing out of order are listed in order, once the ones before them are."""
    written: list[tuple[int, bool]] = []
    gates = {i: asyncio.Event() for i in range(3)}

    async def run(fn, *args):
        if fn is hls.publish_segment:
            await gates[args[2]].wait()
        elif fn is hls.write_playlist:
            written.append((len(args[1]), args[3]))
            fn(*args)

    async def main():
        firsts = []
        live = LiveHls(tmp_path, _plan(3), _track(), on_first=firsts.append, run=run)
        live.start()
        for i in range(3):
            live.segment_done(_plan(3).segments[i], f"s{i}.mp4")
        gates[2].set()
        gates[1].set()
        await asyncio.sleep(0)  # let them run: nothing is listed while segment 0 is missing
        for _ in range(5):
            await asyncio.sleep(0)
        assert written == [] and live.listed == 0
        gates[0].set()
        ended = await live.finish(timeout=5)
        return firsts, ended

    firsts, ended = asyncio.run(main())
    assert ended and len(firsts) == 1
    assert written[-1] == (3, True) and all(n in (1, 2, 3) for n, _ in written)
    assert [n for n, _ in written] == sorted(n for n, _ in written)
    assert (tmp_path / hls.PLAYLIST).read_text().rstrip().endswith("#EXT-X-ENDLIST")


def test_a_failed_publication_is_an_incident_and_stops_the_stream(tmp_path):
    incidents = []

    async def run(fn, *args):
        if fn is hls.publish_segment and args[2] == 1:
            raise OSError("disk full")
        if fn is hls.write_playlist:
            fn(*args)

    async def main():
        live = LiveHls(tmp_path, _plan(3), _track(), on_failure=incidents.append, run=run)
        live.start()
        for seg in _plan(3).segments:
            live.segment_done(seg, "x.mp4")
        return await live.finish(timeout=5)

    assert asyncio.run(main()) is False
    assert len(incidents) == 1 and "segment 1" in incidents[0] and "disk full" in incidents[0]
    text = (tmp_path / hls.PLAYLIST).read_text()
    assert "seg_00000.m4s" in text and "seg_00001.m4s" not in text and "#EXT-X-ENDLIST" not in text
    assert INCIDENT == "hls_unavailable"


def test_a_retry_never_shrinks_the_playlist(tmp_path):
    """A later attempt re-lists the segments an earlier one published: never fewer than before."""
    hls.write_playlist(tmp_path, [hls.PlaylistEntry(i, 0.4) for i in range(2)], 1, ended=False)
    seen = []

    async def run(fn, *args):
        if fn is hls.write_playlist:
            seen.append(len(args[1]))
            fn(*args)

    async def main():
        live = LiveHls(tmp_path, _plan(3), _track(), run=run)
        live.start()
        for seg in _plan(3).segments:
            live.segment_done(seg, "x.mp4")
        return await live.finish(timeout=5)

    assert asyncio.run(main())
    assert seen and min(seen) >= 2 and seen[-1] == 3
    assert hls.listed_segments(tmp_path) == 3
