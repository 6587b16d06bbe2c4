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
drift × window: 1 ms at 100 ppm over 10 s). A new session (a restarted robot, its clock another)
starts over. A stamp more than FUTURE_TOLERANCE_S ahead of this computer's clock reads fresh
(age 0) and leaves the window alone: one message stamped far in the future must not make every
later observation look that much older.
"""

from __future__ import annotations

from collections import deque

from crl.runtime.messages import FUTURE_TOLERANCE_S

WINDOW_S = 10.0  # the arrivals whose smallest lag sets the clocks' offset


class StampAges:
    """Ages at arrival of one stream's observations, the sender's clock offset taken out."""

    def __init__(self, window_s: float = WINDOW_S):
        if not window_s > 0:
            raise ValueError(f"window_s: must be positive, got {window_s}")
        self.window_s = window_s
        self._session: int | None = None
        # (arrival, lag), lags increasing: the front is the window's smallest.
        self._lags: deque[tuple[float, float]] = deque()

    def age(self, session: int, lag: float, arrival: float) -> float:
        """The observation's age at its arrival (≥ 0): `lag` (this computer's clock at its arrival
        minus its stamp, in one timebase) less the smallest lag of the last `window_s` of this
        session's arrivals (`arrival` on the clock the window runs on)."""
        if session != self._session:
            self._session = session
            self._lags.clear()
        if lag < -FUTURE_TOLERANCE_S:
            return 0.0
        while self._lags and self._lags[-1][1] >= lag:
            self._lags.pop()
        self._lags.append((arrival, lag))
        while self._lags[0][0] < arrival - self.window_s:
            self._lags.popleft()
        return lag - self._lags[0][1]
