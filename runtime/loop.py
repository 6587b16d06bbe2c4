"""A fixed-rate loop on the monotonic clock with absolute deadlines.

Deadline k is `start + k · period`, never "last wake-up + period", so errors do not accumulate
into drift. A tick whose work ends after the next deadline is a miss; when whole periods have
gone by, their deadlines are skipped (each counted as a miss) instead of run back to back in a
burst: a controller that is late must act on fresh data once, not catch up several times.

The wait sleeps until shortly before the deadline and spins the rest (`spin_s`): the kernel's
sleep overshoots by tens to hundreds of microseconds, more on a busy machine, and a robot's
control loop can afford a fraction of a core to remove it. `spin_s=0` sleeps all the way.
"""

from __future__ import annotations

import gc
import math
import os
import threading
import time
from collections.abc import Callable
from typing import TypeVar

from crl.runtime.controller import Stats

Clock = Callable[[], float]
L = TypeVar("L")
DEFAULT_SPIN_S = 0.0005


REALTIME_PRIORITY = 50


def set_realtime(priority: int = REALTIME_PRIORITY) -> str:
    """Ask for SCHED_FIFO for the calling thread and the threads it starts from now on (Linux,
    needs CAP_SYS_NICE or rtprio limits); returns what happened, in words, so a caller can
    print it."""
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(priority))
    except (AttributeError, PermissionError, OSError) as e:
        return f"real-time scheduling refused ({e}); running with normal priority"
    return f"running with SCHED_FIFO priority {priority}"


def open_realtime(open_link: Callable[[], L], priority: int = REALTIME_PRIORITY) -> tuple[L, str]:
    """Open a transport whose I/O threads run one SCHED_FIFO level above the control loop.

    ZMQ's I/O thread starts with the first socket and inherits the scheduling of the thread
    that starts it. SCHED_FIFO does not time-slice: at the loop's own level that thread would
    wait while the loop spins for its deadline, and on a 2-core computer whose other core is
    busy the observation the tick needs would arrive just after it (measured: at 500 Hz the
    ticks then acted on observations a period old, and stale stops followed). One level above,
    it preempts the spin to deliver.
    """
    said = set_realtime(priority + 1)
    link = open_link()
    if said.startswith("running"):
        said = set_realtime(priority) + f" (its transport's I/O threads {priority + 1})"
    return link, said


class FixedRateLoop:
    """Calls `on_tick(deadline, now)` once per period until `stop` is set."""

    def __init__(self, period: float, stats: Stats, *, clock: Clock = time.monotonic,
                 spin_s: float = DEFAULT_SPIN_S):
        if not (math.isfinite(period) and period > 0):
            raise ValueError(f"period: must be positive, got {period}")
        self.period, self.stats, self.clock = period, stats, clock
        self.spin_s = max(0.0, spin_s)

    def wait_until(self, deadline: float) -> float:
        """Sleep, then spin, until `deadline`; returns the time woken."""
        remaining = deadline - self.clock() - self.spin_s
        if remaining > 0:
            time.sleep(remaining)
        now = self.clock()
        while now < deadline:
            now = self.clock()
        return now

    def run(self, on_tick: Callable[[float, float], None], stop: threading.Event,
            start: float | None = None, max_ticks: int | None = None) -> None:
        """Run until `stop` is set (or `max_ticks`); the first deadline is `start` (now)."""
        # Collections of the young generation happen at allocation counts, i.e. mid-tick:
        # freeze what setup allocated so the collector has less to walk when it does run.
        gc.collect()
        gc.freeze()
        now = self.clock()
        deadline = now if start is None else start
        if deadline < now:  # setup outlasted the given start: begin on the next deadline
            deadline += math.ceil((now - deadline) / self.period) * self.period
        ticks = 0
        while not stop.is_set() and (max_ticks is None or ticks < max_ticks):
            now = self.wait_until(deadline)
            self.stats.period_error.add(now - deadline)
            on_tick(deadline, now)
            ticks += 1
            deadline += self.period
            late = self.clock() - deadline
            if late >= 0:  # this tick's command went out after the next deadline: a miss
                self.stats.counts["misses"] += 1
                behind = int(late // self.period)  # whole periods gone: skip, do not burst
                self.stats.counts["misses"] += behind
                deadline += behind * self.period
