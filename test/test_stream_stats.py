"""Rates over a window and stamp-gap counting, against hand-counted streams."""
from __future__ import annotations

import pytest

from spidepth_ros.stream_stats import RateWindow, StampGapCounter

MS = 1_000_000


def test_gaps_counted_from_a_10hz_stream():
    counter = StampGapCounter()
    kept = [i for i in range(40) if i not in (10, 11, 12, 20, 33)]
    lost = [counter.add(i * 100 * MS) for i in kept]
    assert counter.missing == 5
    assert lost[kept.index(13)] == 3 and lost[kept.index(21)] == 1 and lost[kept.index(34)] == 1


def test_jitter_is_not_a_gap_and_restarts_are_not_losses():
    counter = StampGapCounter()
    t = 0
    for i in range(30):
        t += (100 + (13 if i % 2 else -13)) * MS          # +-13 % jitter
        counter.add(t)
    assert counter.missing == 0
    counter.add(t + 60_000 * MS)                          # a minute later: a restart, not 599 lost frames
    counter.add(0)                                        # stamps going backwards: a bag played again
    assert counter.missing == 0 and counter.resets == 2


def test_window_rate_decays_after_the_stream_stops():
    window = RateWindow(5.0)
    for i in range(50):
        window.add(100.0 + i * 0.1)                        # 10 Hz for 4.9 s
    assert window.rate(104.9) == pytest.approx(10.0, rel=0.03)
    # at 107 s the window (102, 107] holds the 30 events from 102.0 (float: just inside or out) to 104.9 s
    assert window.rate(107.0) == pytest.approx(29 / 5.0, rel=0.04)
    assert window.rate(111.0) == 0.0
