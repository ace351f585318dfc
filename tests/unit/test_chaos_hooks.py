"""The chaos tests' fault markers: one call takes a marker; ``after N`` lets N calls pass first."""

from __future__ import annotations

from serve_app.chaos import ChaosHooks


def test_a_marker_is_taken_by_exactly_one_call(tmp_path):
    hooks = ChaosHooks(str(tmp_path))
    (tmp_path / "generator_hang").write_text("600")
    assert hooks.take("generator_hang") == "600"
    assert hooks.take("generator_hang") is None
    assert list(tmp_path.iterdir()) == []


def test_after_n_lets_n_calls_pass_then_fires_once(tmp_path):
    hooks = ChaosHooks(str(tmp_path))
    (tmp_path / "generator_hang").write_text("600 after 3")
    assert [hooks.take("generator_hang") for _ in range(5)] == [None, None, None, "600", None]
    assert list(tmp_path.iterdir()) == []  # nothing left behind for the next test


def test_an_empty_payload_reads_as_one_and_disabled_hooks_take_nothing(tmp_path):
    (tmp_path / "generator_oom").write_text("")
    assert ChaosHooks(str(tmp_path)).take("generator_oom") == "1"
    (tmp_path / "generator_oom").write_text("")
    assert ChaosHooks(None).take("generator_oom") is None
    assert (tmp_path / "generator_oom").exists()


def test_a_standing_marker_is_read_each_time_and_never_consumed(tmp_path):
    hooks = ChaosHooks(str(tmp_path))
    assert hooks.seconds("generator_slow") == 0.0
    (tmp_path / "generator_slow").write_text("0.1\n")
    assert hooks.seconds("generator_slow") == hooks.seconds("generator_slow") == 0.1
    (tmp_path / "generator_slow").write_text("fast")
    assert hooks.seconds("generator_slow") == 0.0
    assert ChaosHooks(None).seconds("generator_slow") == 0.0
