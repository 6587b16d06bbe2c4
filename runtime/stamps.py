"""A robot's stamps against this computer's clock: how old its data was when it arrived.

A robot stamps each observation on its own clock. Were that clock this computer's, the data's age
at arrival would be arrival − stamp. It is not: a robot's computer keeps its own time, off by an
offset and drifting (100 ppm is 6 ms a minute), and a robot whose clock runs behind ours would
have every observation look older than it is, and after minutes older than the staleness limit:
the safe action for good, from a robot that is fine. `StampAges` takes the clocks' difference
out: over the last `window_s` of arrivals, the smallest lag (arrival − stamp) is the quickest
delivery plus the clocks' offset, and an observation's age at arrival is how much later than that
it came. What a stamp is for still holds: data that keeps coming with an old stamp (a frozen
sensor resending its last reading) ages as before, and a delivery late against the window's
quickest reads as late. A drift within the window makes ages read older, never younger (by at most
drift × window: 1 ms at 100 ppm over 10 s).

The window moves to a new clock when the clocks' difference is known to have changed, so that it
never carries an offset that no longer holds: at once for a new session (a restarted robot, its
clock another); for a clock step within a session, once two observations in a row agree on it.
A step is an observation off the window's clock by more than `step_s`:
- behind it: the robot's stamps going back (its clock set back: NTP, a reboot, a
  microcontroller's counter restarting) or this computer's stamp clock jumping ahead of the
  window's (ours set forward, as a Jetson's is at boot without a clock battery). Its lag, and
  every later one, is larger by the step: without a new window each would read stale for
  `window_s`. The first reads old, as a replayed message would;
- ahead of it: the robot's clock set forward or ours set back. Its lag is smaller; it reads fresh.
A lone observation off the clock (one replayed, misordered or stamped far ahead: a bad driver, a
spoof) is aged against the window and moves nothing, so however such messages alternate with the
robot's own, an old one reads old and the robot's read true. A clock ahead of ours, by any
amount, is an offset like any other. A step smaller than `step_s` is not told from jitter; it
ages data by at most that much. Two observations agree on a clock only when the later one is
new data (its stamp after the first's): a message delivered twice, or a frozen sensor, is one
observation however often it comes, and moves nothing.

A gap longer than the window (a cable pulled, a robot paused or restarted in the same session)
leaves no arrivals to learn from, so the last window's smallest lag is held over it: the first
observation after the gap is judged against the clock the robot had. One whose lag is more than
`step_s` from it either way is off that clock, as above: a stale reading (a frozen sensor, a
backlog from before the gap) reads its true age, and a clock that drifted or was stepped while
silent costs the one observation that shows it. Without the held lag, the first observation after
a gap would start a window of its own and read fresh, however old it was.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

WINDOW_S = 10.0  # the arrivals whose smallest lag sets the clocks' offset
STEP_S = 0.01  # the default `step_s`; a controller passes half its staleness limit


class StampAges:
    """Ages at arrival of one stream's observations, the sender's clock offset taken out."""

    def __init__(self, window_s: float = WINDOW_S, step_s: float = STEP_S):
        for name, value in (("window_s", window_s), ("step_s", step_s)):
            if not value > 0:
                raise ValueError(f"{name}: must be positive, got {value}")
        self.window_s, self.step_s = window_s, step_s
        self.steps = 0  # clock steps followed (the window moved to a new clock)
        self._session: int | None = None
        # (arrival, lag), lags increasing: the front is the window's smallest.
        self._lags: deque[tuple[float, float]] = deque()
        self._stamp = 0.0  # the newest stamp in the window
        self._offset = 0.0  # our stamp clock less the window's clock, at the last arrival
        self._candidate: _Arrival | None = None  # the last one, off the window's clock
        self._held: float | None = None  # the smallest lag before a gap emptied the window

    def age(self, session: int, stamp: float, offset: float, arrival: float) -> float:
        """The observation's age at its arrival (≥ 0).

        `stamp` is the robot's, in the timebase of this computer's stamp clock (wall or ROS
        time); `offset` is that clock less the window's clock (`arrival`'s, monotonic) at the
        arrival, so the lag is `arrival + offset - stamp`; the age is that less the smallest lag
        of the last `window_s` of this session's arrivals."""
        this = _Arrival(arrival, arrival + offset - stamp, stamp, offset)
        if session != self._session:
            self._session, self._held = session, None
            self._lags.clear()
        if self._lags and self._lags[-1][0] < arrival - self.window_s:  # a gap: all expired
            self._held = self._lags[0][1]
            self._lags.clear()
        while self._lags and self._lags[0][0] < arrival - self.window_s:
            self._lags.popleft()
        candidate, self._candidate = self._candidate, None
        if self._lags:
            least = self._lags[0][1]
            off = this.lag < least - self.step_s  # ahead of the window's clock
        elif self._held is not None:  # the first after a gap: against the clock the robot had
            least = self._held
            off = abs(this.lag - least) > self.step_s
        else:  # the session's first observation
            return self._start(this)
        behind = stamp < self._stamp - self.step_s or offset > self._offset + self.step_s
        if off or behind:
            if candidate is None or not candidate.agrees(this, self.step_s):
                self._candidate = this
                return max(0.0, this.lag - least)
            self.steps += 1  # the second in a row on another clock: the window takes it
            self._start(candidate)
        elif not self._lags:  # after a gap, on the clock it had: the window goes on from it
            self._lags.append((arrival, least))
            self._held = None
        while self._lags and self._lags[-1][1] >= this.lag:
            self._lags.pop()
        self._lags.append((arrival, this.lag))
        self._stamp, self._offset = max(stamp, self._stamp), offset
        return this.lag - self._lags[0][1]

    def _start(self, first: _Arrival) -> float:
        """A window on `first`'s clock, holding it alone; its age, 0."""
        self._lags = deque([(first.arrival, first.lag)])
        self._stamp, self._offset, self._held = first.stamp, first.offset, None
        return 0.0


@dataclass(frozen=True)
class _Arrival:
    arrival: float
    lag: float
    stamp: float
    offset: float

    def agrees(self, later: _Arrival, step_s: float) -> bool:
        """`later` is new data on this one's clock: its lag within a step, its stamp after."""
        return abs(later.lag - self.lag) <= step_s and later.stamp > self.stamp
