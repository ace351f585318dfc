"""The segment driver encodes the job's AAC track beside the segments and the final join copies it
(actors/driver.py, actors/media/audio_track.py): the track's call starts before any segment is
written, the join gets that track, the output's audio is what an in-place AAC encode gives, and an
attempt that ends early waits for the track's call before its directory is cleaned up."""

from __future__ import annotations

import asyncio
import threading

import av
import pytest

from actors.errors import InternalError
from actors.media.audio_track import AUDIO_TRACK_NAME
from actors.media.join import join_segments
from actors.driver import DrivePolicy, RenderRequest, SegmentDriver
from actors.local_stages import LocalStages
from actors.pipeline import LocalRenderer, RenderOptions, avatar_params_for
from actors.segment_writer import NEVER, SegmentWriter
from tests.media import speech_like, synthetic_frames, write_audio, write_video

BOX = (40, 20, 120, 110)


class RecordingWriter(SegmentWriter):
    """A real writer that records the order of its calls (and can fail or slow down on demand)."""

    def __init__(self, fail_segment: bool = False, track_seconds: float = 0.0):
        super().__init__()
        self.events: list[tuple[str, str]] = []
        self.lock = threading.Lock()
        self.fail_segment = fail_segment
        self.track_seconds = track_seconds

    def _note(self, what: str, detail: str = "") -> None:
        with self.lock:
            self.events.append((what, detail))

    def encode_audio_track(self, audio_path, track_path, stop=NEVER):
        self._note("track_start", str(track_path))
        try:
            if self.track_seconds:  # a slow call (a long track on a busy writer)
                threading.Event().wait(self.track_seconds)
            out = super().encode_audio_track(audio_path, track_path, stop)
        except Exception as exc:
            self._note("track_end", type(exc).__name__)
            raise
        self._note("track_end", "")
        self._note("track_done", out)
        return out

    def write_segment(self, avatar, sources, present, generated, out_path, stop=NEVER):
        self._note("segment_start", str(out_path))
        if self.fail_segment:
            raise InternalError("the disk is full")
        return super().write_segment(avatar, sources, present, generated, out_path, stop)

    def finalize(self, segment_paths, audio_track, out_path, fps, stop=NEVER):
        self._note("finalize", str(audio_track))
        return super().finalize(segment_paths, audio_track, out_path, fps, stop)


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    d = tmp_path_factory.mktemp("media")
    return {"audio": write_audio(d / "speech.wav", speech_like(2.1, seed=4)),
            "template": write_video(d / "template.mp4", synthetic_frames(30, 160, 120), 25)}


def _renderer(tmp_path, writer: RecordingWriter) -> LocalRenderer:
    r = LocalRenderer(RenderOptions(box=BOX, cache_dir=str(tmp_path / "cache"), segment_frames=16))
    r.writer = writer
    return r


def test_the_track_is_encoded_beside_the_segments_and_copied_by_the_join(media, tmp_path):
    writer = RecordingWriter()
    out = tmp_path / "out" / "final.mp4"
    _renderer(tmp_path, writer).render(str(media["audio"]), str(media["template"]), str(out))
    kinds = [k for k, _ in writer.events]
    assert kinds.count("track_start") == 1 and kinds.count("finalize") == 1
    assert kinds.index("track_start") < kinds.index("segment_start")  # started before any segment
    assert kinds[-1] == "finalize" and kinds.index("track_done") < kinds.index("finalize")
    assert ("track_end", "") in writer.events
    track = dict(writer.events)["finalize"]
    assert track.endswith(AUDIO_TRACK_NAME) and track == dict(writer.events)["track_done"]

    # The audio is what an in-place encode of the client's file gives, packet for packet.
    with av.open(str(out)) as c:
        copied = [(bytes(p), p.pts) for p in c.demux(c.streams.audio[0]) if p.size]
    join_segments([_one_segment(out, tmp_path)], media["audio"], tmp_path / "ref.mp4", 25)
    with av.open(str(tmp_path / "ref.mp4")) as c:
        encoded = [(bytes(p), p.pts) for p in c.demux(c.streams.audio[0]) if p.size]
    assert copied == encoded and len(copied) > 10


def _one_segment(mp4, tmp_path):
    """The rendered video alone, as one segment, to join again with an in-place AAC encode."""
    seg = tmp_path / "video_only.mp4"
    with av.open(str(mp4)) as src, av.open(str(seg), "w", format="mp4") as dst:
        v_in = src.streams.video[0]
        v_out = dst.add_stream_from_template(v_in)
        for packet in src.demux(v_in):
            if packet.size:
                packet.stream = v_out
                dst.mux(packet)
    return seg


def test_an_attempt_that_fails_waits_for_the_track_before_it_returns(media, tmp_path):
    """The driver, in a loop that goes on (as the service's does): when ``render`` raises, the
    track's call has already ended, so the caller may remove the job's directory."""
    writer = RecordingWriter(fail_segment=True, track_seconds=0.5)
    r = _renderer(tmp_path, writer)
    stages = LocalStages(r.generator, r.cache, writer, r.options.limits)
    work = tmp_path / "work"

    async def main():
        driver = SegmentDriver(stages, DrivePolicy(max_inflight=2, prepare_timeout_s=None))
        with pytest.raises(InternalError, match="the disk is full"):
            await driver.render(RenderRequest(
                audio_path=str(media["audio"]), video_path=str(media["template"]), out_path=str(tmp_path / "x.mp4"),
                work_dir=str(work), avatar=avatar_params_for(r.options, r.generator.crop_geometry),
                segment_frames=16))
        return list(writer.events)  # at the moment render() raised

    events = asyncio.run(main())
    # It saw the attempt's stop token (set on the early exit) and wrote no track.
    assert ("track_end", "CancelledError") in events
    assert not (work / AUDIO_TRACK_NAME).exists()
