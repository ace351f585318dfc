"""actors/stop_token.py: the per-attempt stop flag, and SegmentWriter ending a stopped call within a frame."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from actors.avatar import AvatarCache, AvatarParams
from actors.errors import CancelledError
from actors.limits import MediaLimits
from actors.segment_writer import SegmentWriter
from actors.stop_token import StopToken
from tests.media import synthetic_frames, write_video


def test_token_is_per_attempt_picklable_and_never_recreates_a_removed_work_dir(tmp_path):
    a, b = StopToken.for_attempt(tmp_path), StopToken.for_attempt(tmp_path)
    assert a.path != b.path and not a.is_set()
    copy = pickle.loads(pickle.dumps(a))  # what an actor receives
    a.check("write")
    a.set()
    assert copy.is_set() and not b.is_set()  # another process sees it; the next attempt does not
    with pytest.raises(CancelledError, match="stopped during write"):
        copy.check("write")
    gone = StopToken.for_attempt(tmp_path / "removed")
    gone.set()
    assert not (tmp_path / "removed").exists()


class _StopAfter:
    """Sets the token after ``n`` checks: a driver stopping the attempt while the segment is written."""

    def __init__(self, token: StopToken, n: int):
        self.token, self.n, self.checks = token, n, 0

    def check(self, stage: str) -> None:
        self.checks += 1
        if self.checks == self.n:
            self.token.set()
        self.token.check(stage)


def test_writer_stops_within_one_frame_and_leaves_no_file(tmp_path):
    video = write_video(tmp_path / "t.mp4", synthetic_frames(30, 160, 120), 25)
    avatar = AvatarCache(str(tmp_path / "cache"), MediaLimits()).get_or_build(
        video, AvatarParams(crop_size=96, box=(40, 20, 120, 110)))
    sources = np.arange(25)
    present = np.ones(25, bool)
    crops = np.asarray(avatar.crops()[:25])
    out = tmp_path / "seg.mp4"
    stop = _StopAfter(StopToken.for_attempt(tmp_path), n=40)  # 25 decode checks, then 15 frame checks
    with pytest.raises(CancelledError):
        SegmentWriter().write_segment(avatar, sources, present, crops, out, stop=stop)
    assert stop.checks == 40  # not one frame more
    assert not out.exists() and not list(tmp_path.glob(".seg.mp4.*"))
    # Not stopped: the same call writes the segment.
    assert SegmentWriter().write_segment(avatar, sources, present, crops, out) == 25 and out.is_file()
