"""A standard fMP4 HLS rendition (init.mp4 + 1 s .m4s segments + EVENT playlist) made with PyAV's
hls muxer from the demo assets, for browser tests of the studio's live player."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av

SEGMENT_SECONDS = 1


def write_fmp4_hls(video: Path, audio: Path, out_dir: Path, fps: int = 25) -> Path:
    """Re-encode ``video`` (looped to the audio's length) with ``audio`` as HLS; returns the playlist.
    Audio is muxed interleaved with the video so that every segment carries its own audio."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with av.open(str(video)) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    with av.open(str(audio)) as c:
        stream = c.streams.audio[0]
        rate = stream.rate
        chunks = list(c.decode(stream))
    n_samples = sum(f.samples for f in chunks)
    n_out = -(-n_samples * fps // rate)  # ceil: the video covers the whole audio
    height, width = frames[0].shape[:2]
    playlist = out_dir / "index.m3u8"
    options = {"hls_segment_type": "fmp4", "hls_time": str(SEGMENT_SECONDS), "hls_playlist_type": "event",
               "hls_fmp4_init_filename": "init.mp4", "hls_flags": "independent_segments",
               "hls_segment_filename": str(out_dir / "seg%03d.m4s")}
    with av.open(str(playlist), "w", format="hls", options=options) as out:
        vs = out.add_stream("libx264", rate=fps)
        vs.width, vs.height, vs.pix_fmt = width, height, "yuv420p"
        vs.codec_context.gop_size = fps * SEGMENT_SECONDS  # a keyframe starts every segment
        vs.options = {"preset": "veryfast", "sc_threshold": "0"}
        aus = out.add_stream("aac", rate=rate, layout="mono")
        sent = 0
        pending = iter(chunks)
        for i in range(n_out):
            frame = av.VideoFrame.from_ndarray(frames[i % len(frames)], format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, fps)
            for packet in vs.encode(frame):
                out.mux(packet)
            while sent < (i + 1) * rate / fps:
                chunk = next(pending, None)
                if chunk is None:
                    break
                chunk.pts, chunk.time_base = sent, Fraction(1, rate)
                sent += chunk.samples
                for packet in aus.encode(chunk):
                    out.mux(packet)
        for packet in vs.encode(None):
            out.mux(packet)
        for packet in aus.encode(None):
            out.mux(packet)
    return playlist
