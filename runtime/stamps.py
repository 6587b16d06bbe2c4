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

The window starts over when the clocks' difference is known to have changed, so that it never
carries an offset that no longer holds:
- a new session (a restarted robot, its clock another);
- a clock step: the robot's stamps going back (its clock set back: NTP, a reboot, a
  microcontroller's counter restarting) or this computer's stamp clock jumping ahead of the
  window's (ours set forward, as a Jetson without a clock battery is at boot). Either makes every
  later lag larger by the step, which without a new window reads as stale data for `window_s`.
  The observation that shows the step is aged against the old window (one replayed or
  misordered message with an old stamp still reads old), the ones after it against the new. A
  step smaller than `step_s` is not told from jitter; it ages data by at most that much. Steps
  the other way need nothing: lags fall, and the window's smallest follows at once.
A stamp more than FUTURE_TOLERANCE_S ahead of this computer's clock reads fresh (age 0) and leaves
the window alone: one message stamped far in the future must not make every later observation
look that much older.
"""

from __future__ import annotations

from collections import deque

from crl.runtime.messages import FUTURE_TOLERANCE_S

WINDOW_S = 10.0  # the arrivals whose smallest lag sets the clocks' offset
STEP_S = 0.01  # the default `step_s`; a controller passes half its staleness limit


class StampAges:
    """Ages at arrival of one stream's observations, the sender's clock offset taken out."""

    def __init__(self, window_s: float = WINDOW_S, step_s: float = STEP_S):
        for name, value in (("window_s", window_s), ("step_s", step_s)):
            if not value > 0:
                raise ValueError(f"{name}: must be positive, got {value}")
        self.window_s, self.step_s = window_s, step_s
        self.steps = 0  # clock steps seen (the window started over for each)
        self._session: int | None = None
        self._stamp = -float("inf")  # the newest stamp in the window
        self._offset = float("inf")  # our stamp clock less the window's clock, at that arrival
        # (arrival, lag), lags increasing: the front is the window's smallest.
        self._lags: deque[tuple[float, float]] = deque()

    def age(self, session: int, stamp: float, offset: float, arrival: float) -> float:
        """The observation's age at its arrival (≥ 0).

        `stamp` is the robot's, in the timebase of this computer's stamp clock (wall or ROS
        time); `offset` is that clock less the window's clock (`arrival`'s, monotonic) at the
        arrival, so the lag is `arrival + offset - stamp`; the age is that less the smallest lag
        of the last `window_s` of this session's arrivals."""
        if session != self._session:
            self._session = session
            self._lags.clear()
        lag = arrival + offset - stamp
        if lag < -FUTURE_TOLERANCE_S:
            return 0.0
        stepped = bool(self._lags) and (stamp < self._stamp - self.step_s
                                        or offset > self._offset + self.step_s)
        while self._lags and self._lags[-1][1] >= lag:
            self._lags.pop()
        self._lags.append((arrival, lag))
        while self._lags[0][0] < arrival - self.window_s:
            self._lags.popleft()
        age = lag - self._lags[0][1]
        if stepped:  # this one is aged as before; the next ones against the new clock
            self.steps += 1
            self._lags = deque([(arrival, lag)])
            self._stamp = stamp
        else:
            self._stamp = max(stamp, self._stamp)
        self._offset = offset
        return age
