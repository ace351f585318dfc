"""Segment cutting: fixed-size segments, then a tapered tail (the last segment's write is the one
step nothing overlaps with), deterministic and covering every frame exactly once."""

from __future__ import annotations

import pytest

from actors.plan import segment_bounds
from actors.segment_writer import writer_threads


@pytest.mark.parametrize("n_out,size", [(250, 50), (240, 50), (30, 50), (3, 50), (0, 50), (150, 10), (1, 1),
                                        (1000, 16), (77, 25)])
def test_segments_cover_every_frame_once_in_order(n_out, size):
    bounds = segment_bounds(n_out, size)
    assert [a for a, _ in bounds] == ([0] if bounds else []) + [b for _, b in bounds[:-1]]
    assert (bounds[-1][1] if bounds else 0) == n_out
    assert all(0 < b - a <= size for a, b in bounds)
    assert bounds == segment_bounds(n_out, size)  # retries cut the same segments


def test_the_tail_is_tapered():
    assert [b - a for a, b in segment_bounds(250, 50)] == [50, 50, 50, 50, 25, 13, 12]
    assert [b - a for a, b in segment_bounds(30, 50)] == [15, 8, 7]
    assert [b - a for a, b in segment_bounds(3, 50)] == [3]  # never below 4 frames a piece
    sizes = [b - a for a, b in segment_bounds(10_000, 50)]
    assert sizes[:-3] == [50] * (len(sizes) - 3) and sizes[-1] <= 50 // 4


def test_writer_threads_follow_the_actor_cpus():
    assert writer_threads(0.25) == 1 and writer_threads(1) == 1 and writer_threads(1.5) == 1
    assert writer_threads(2) == 0 and writer_threads(8) == 0  # FFmpeg's automatic counts
