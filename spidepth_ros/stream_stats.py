"""Counters for a stream of camera frames (no rclpy): a rate over a recent window and gaps in header stamps.

The node reports both in /diagnostics: a rate averaged since start-up stays high long after the camera stopped,
and frames lost in transport (best-effort DDS drops large images on a busy machine) are invisible unless the
stamps that did arrive are checked for holes.
"""
from __future__ import annotations

from collections import deque
from typing import Optional

#: A stamp step this many times the typical step counts as a gap.
GAP_FACTOR = 1.5
#: A step this many times the typical step is a pause or a restart of the stream (a bag played again, a driver
#: restarted), not that many lost frames: the estimate starts afresh.
RESTART_FACTOR = 50.0
#: Stamp steps remembered to estimate the typical step (the median).
PERIOD_HISTORY = 31


class RateWindow:
    """Events per second over the last ``window_s`` seconds (monotonic times)."""

    def __init__(self, window_s: float = 5.0) -> None:
        self.window_s = window_s
        self._times: deque[float] = deque()

    def add(self, t: float) -> None:
        self._times.append(t)
        self._trim(t)

    def _trim(self, now: float) -> None:
        while self._times and self._times[0] < now - self.window_s:
            self._times.popleft()

    def rate(self, now: float) -> float:
        """Events per second in ``(now - window_s, now]``; 0 when fewer than two events fall inside it."""
        self._trim(now)
        if len(self._times) < 2:
            return 0.0
        # span from the first event to now, so a stream that stopped decays instead of freezing at its last rate
        return (len(self._times) - 1) / max(now - self._times[0], 1e-9)

    @property
    def last(self) -> Optional[float]:
        return self._times[-1] if self._times else None


class StampGapCounter:
    """Estimates frames missing from a stream from the holes in its header stamps (nanoseconds).

    ROS 2 images carry no sequence number, so a step between consecutive stamps larger than ``GAP_FACTOR`` times
    the median recent step counts as ``round(step / median) - 1`` lost frames. Stamps that go backwards (a bag
    looping, a clock reset) or jump by more than ``RESTART_FACTOR`` steps restart the estimate instead.
    """

    def __init__(self) -> None:
        self.missing = 0
        self.resets = 0
        self._last: Optional[int] = None
        self._steps: deque[int] = deque(maxlen=PERIOD_HISTORY)

    def typical_step_ns(self) -> Optional[float]:
        if len(self._steps) < 3:
            return None
        ordered = sorted(self._steps)
        return float(ordered[len(ordered) // 2])

    def add(self, stamp_ns: int) -> int:
        """Record one stamp; returns the frames judged missing just before it."""
        last, self._last = self._last, stamp_ns
        if last is None:
            return 0
        step = stamp_ns - last
        if step <= 0:
            if step < 0:
                self.resets += 1
                self._steps.clear()
            return 0
        typical = self.typical_step_ns()
        if typical is not None and step > RESTART_FACTOR * typical:
            self.resets += 1
            self._steps.clear()
            return 0
        self._steps.append(step)
        if typical is None or step <= GAP_FACTOR * typical:
            return 0
        lost = max(int(round(step / typical)) - 1, 0)
        self.missing += lost
        return lost
