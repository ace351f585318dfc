"""The writer's decode cursor: consecutive segments continue one decoder, and every request yields
exactly the frames a fresh decode would."""

from __future__ import annotations

import numpy as np

from actors.media.frame_cursor import FrameCursor
from actors.media.template import iter_frames
from tests.media import synthetic_frames, write_video


def test_cursor_continues_in_order_and_reopens_on_jumps(tmp_path):
    path = str(write_video(tmp_path / "t.mp4", synthetic_frames(60, 64, 48)))
    ref = {i: f for i, f in iter_frames(path)}
    cur = FrameCursor()
    got = [i for i, _ in cur.frames(path, 0, 20)] + [i for i, _ in cur.frames(path, 20, 40)]
    assert got == list(range(40))
    assert cur.frames_decoded == 40  # in order: nothing decoded twice
    back = list(cur.frames(path, 5, 10))  # a jump back reopens
    assert [i for i, _ in back] == list(range(5, 10))
    assert all(np.array_equal(f, ref[i]) for i, f in back)
    tail = list(cur.frames(path, 50, 100))  # past the end: stops at the last frame
    assert [i for i, _ in tail] == list(range(50, 60))
    cur.close()
