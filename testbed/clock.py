"""A robot's own clock for the testbed's robots, which runs fast or slow against this computer's.

Separate computers' clocks drift apart (crystals differ by up to about 100 ppm: 6 ms a minute),
so a runtime's loop must follow the robot's. `crl-sim robot --clock-ppm` and the ROS sim_bridge's
`clock_ppm` pace their physics and stamp their messages with a `RobotClock`, which lets that be
tested and measured on one computer.
"""

from __future__ import annotations

import math
import time

from crl.core.usage import ConfigError

# Beyond this it is no crystal's error but a wrong rate.
MAX_CLOCK_PPM = 10_000.0


class ClockError(ConfigError):
    """A clock rate no robot has; one line."""


class RobotClock:
    """The robot's own clock: `ppm` parts per million fast (negative: slow) against this
    computer's, as a separate computer's crystal is (100 ppm is ordinary: 6 ms a minute). It
    paces the physics and stamps the messages, so a runtime's loop can be tested against a robot
    that drifts."""

    def __init__(self, ppm: float = 0.0):
        if not (math.isfinite(ppm) and abs(ppm) <= MAX_CLOCK_PPM):
            raise ClockError(f"clock ppm: must be a number within ±{MAX_CLOCK_PPM:g}, got {ppm}")
        self.ppm, self.rate = ppm, 1.0 + ppm * 1e-6
        self.host_start, self.wall_start = time.monotonic(), time.time()

    def elapsed(self, host: float | None = None) -> float:
        """Seconds on this clock since it started, at `host` (time.monotonic; None: now)."""
        return ((time.monotonic() if host is None else host) - self.host_start) * self.rate

    def host_time(self, elapsed: float) -> float:
        """time.monotonic when this clock will read `elapsed`."""
        return self.host_start + elapsed / self.rate

    def wall(self, host: float | None = None) -> float:
        """Its wall-clock time (the stamps it sends), now or at `host`."""
        return self.wall_start + self.elapsed(host)
