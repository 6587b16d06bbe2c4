"""The sample-locked loop (`crl.runtime.loop.SampleLockedLoop`) against simulated robots on a
simulated clock: a robot whose clock runs 100 ppm fast or slow, one with jittery sample times,
one that restarts at another phase, one that stops, one that sends several samples a period and
a flood. No real time passes; each case runs thousands of ticks in well under a second."""

from __future__ import annotations

import bisect
import threading
import time

import numpy as np
import pytest

from crl.runtime.controller import Stats
from crl.runtime.loop import (
    LOCK_TICKS,
    SIM_CLOCK_POLL_S,
    WINDOW,
    ArrivalSignal,
    FixedRateLoop,
    SampleLockedLoop,
    SpareTime,
    SteppedClock,
)

PERIOD = 0.04  # 25 Hz, the reacher's rate


class SimClock:
    """A clock that moves only when someone waits on it."""

    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t

    def sleep(self, s: float) -> None:
        self.t += max(0.0, s)


class SimRobot:
    """`Samples` from a list of arrival times on the simulated clock."""

    def __init__(self, clock: SimClock, arrivals: np.ndarray):
        self.clock, self.arrivals = clock, np.sort(arrivals)
        self.acted_upto = 0  # arrivals before this index were acted on or reported

    @property
    def count(self) -> int:
        return bisect.bisect_right(self.arrivals, self.clock.t)  # type: ignore[arg-type]

    def wait(self, until: float) -> float | None:
        arrived = self.count
        if arrived > self.acted_upto:  # came while nobody waited: reported at once
            self.acted_upto = arrived
            return float(self.arrivals[arrived - 1])
        if arrived < len(self.arrivals) and self.arrivals[arrived] <= until:
            self.clock.t = max(self.clock.t, float(self.arrivals[arrived]))
            self.acted_upto = self.count
            return float(self.arrivals[arrived])
        self.clock.t = max(self.clock.t, until)
        return None

    def acted(self) -> None:
        self.acted_upto = self.count


def run_loop(arrivals: np.ndarray, ticks: int, work_s: float = 0.0005,
             overrun: dict[int, float] | None = None
             ) -> tuple[list[tuple[float, float]], Stats, SampleLockedLoop, SimRobot]:
    """Run the loop for `ticks` ticks from the first arrival, each tick's work taking `work_s`
    (`overrun`: tick index → its work's time instead); (expected, woken) per tick."""
    clock = SimClock()
    robot = SimRobot(clock, arrivals)
    stats = Stats(clock=clock)
    loop = SampleLockedLoop(PERIOD, stats, robot, clock=clock, spin_s=0.0)
    clock.t = float(arrivals[0])
    robot.acted()
    record: list[tuple[float, float]] = []

    def tick(expected: float, now: float) -> None:
        clock.t += (overrun or {}).get(len(record), work_s)  # the policy's time
        record.append((expected, now))

    mp = pytest.MonkeyPatch()
    mp.setattr("crl.runtime.loop.time.sleep", clock.sleep)
    mp.setattr("crl.runtime.loop.gc.freeze", lambda: None)
    try:
        loop.run(tick, threading.Event(), start=float(arrivals[0]) + PERIOD, max_ticks=ticks)
    finally:
        mp.undo()
    return record, stats, loop, robot


def lag_after_sample(record: list[tuple[float, float]], arrivals: np.ndarray) -> np.ndarray:
    """Per tick: how long after the newest sample it woke (the sample's age when acted on)."""
    woken = np.array([w for _, w in record])
    newest = np.searchsorted(arrivals, woken, side="right") - 1
    return woken - arrivals[newest]


@pytest.mark.parametrize("ppm", [100.0, -100.0, 1000.0])
def test_a_drifting_robot_is_followed_with_every_tick_on_a_fresh_sample(ppm: float) -> None:
    """10 minutes of a 25 Hz robot whose clock runs `ppm` fast or slow, each sample 0.3 ms late
    by transport: after locking, every tick wakes on its sample's arrival, and no sample is
    skipped or repeated. A fixed-rate loop drifts 6 ms a minute at 100 ppm."""
    n = int(600 / PERIOD)
    arrivals = np.arange(n) * PERIOD / (1 + ppm * 1e-6) + 1.0003
    record, stats, loop, _ = run_loop(arrivals, n - 2)
    lag = lag_after_sample(record, arrivals)[LOCK_TICKS:]
    assert lag.max() < 1e-5  # woken by the arrival itself
    assert stats.counts["samples_skipped"] == 0 and stats.counts["samples_repeated"] == 0
    assert stats.counts["misses"] == 0
    assert loop.locked
    # The loop's estimate of the robot's period follows its clock.
    assert abs(loop.rate_period / PERIOD - 1 / (1 + ppm * 1e-6)) < 2e-5


def test_jittery_samples_are_each_acted_on_once() -> None:
    """Sample times jitter by up to ±3 ms (a robot's driver on a busy computer): each is acted
    on as it arrives, none twice, none skipped, once locked."""
    rng = np.random.default_rng(0)
    n = 5000
    arrivals = np.arange(n) * PERIOD + 1.0 + rng.uniform(-0.003, 0.003, n)
    record, stats, _, _ = run_loop(arrivals, n - 2)
    lag = lag_after_sample(record, arrivals)[LOCK_TICKS:]
    assert lag.max() < 1e-5
    assert stats.counts["samples_skipped"] == 0 and stats.counts["samples_repeated"] == 0


def test_a_robot_restarted_at_another_phase_is_caught_up() -> None:
    """The robot restarts half a period out of phase (with a 0.2 s gap): the loop's watchdog
    ticks through the gap, then it catches up with the new phase within a second at 25 Hz and
    acts on each sample as it arrives again."""
    first = np.arange(500) * PERIOD + 1.0
    second = np.arange(1000) * PERIOD + first[-1] + 0.2 + PERIOD / 2
    arrivals = np.concatenate([first, second])
    record, stats, _, _ = run_loop(arrivals, 1450)
    woken = np.array([w for _, w in record])
    after = woken > second[0] + 1.0  # a second after the restart
    lag = lag_after_sample(record, arrivals)
    assert lag[after].max() < 1e-5
    # Every tick of the gap and the catching up kept going at about the nominal rate.
    assert np.diff(woken).max() < PERIOD * (1 + WINDOW) + 1e-3
    assert np.diff(woken).min() > PERIOD * (1 - WINDOW) - 1e-3
    assert stats.counts["samples_repeated"] >= 4  # the gap's ticks took no new sample


@pytest.mark.parametrize("offset", [0.3, 0.7])
def test_a_robot_out_of_phase_is_caught_up_the_short_way(offset: float) -> None:
    """Samples a third of a period after the expected time (past the window: each came after
    its tick's watchdog) are late, and the loop moves its grid later, each tick at most
    MAX_FOLLOW longer; at two thirds they are early for the next tick, and it moves earlier.
    Either way it is on the samples within a second at 25 Hz, and the rate never strays more."""
    arrivals = np.arange(600) * PERIOD + 1.0 + offset * PERIOD
    clock = arrivals[0] - offset * PERIOD  # the loop is told the samples come on the period
    record, _, _, _ = run_loop(np.concatenate([[clock], arrivals]), 500)
    woken = np.array([w for _, w in record])
    gaps = np.diff(woken)
    if offset < 0.5:
        assert gaps.min() > PERIOD * (1 - WINDOW) - 1e-9 and gaps.max() < PERIOD * 1.05 + 1e-9
    else:
        assert gaps.min() > PERIOD * 0.95 - 1e-9
    lag = lag_after_sample(record, np.concatenate([[clock], arrivals]))
    assert lag[woken > 1.0 + 1.0].max() < 1e-5


def test_when_samples_stop_the_loop_keeps_its_rate() -> None:
    """A robot that stops sending: the ticks go on a period apart on this computer's clock (the
    controller's staleness limit then fires), each counted as a repeated sample."""
    arrivals = np.arange(200) * PERIOD + 1.0
    record, stats, _, _ = run_loop(arrivals, 400)
    woken = np.array([w for _, w in record])
    gaps = np.diff(woken[woken > arrivals[-1] + 2 * PERIOD])
    np.testing.assert_allclose(gaps, PERIOD, atol=1e-6)
    assert stats.counts["samples_repeated"] >= 195


@pytest.mark.parametrize("per_period", [5, 400])
def test_a_robot_sending_many_samples_a_period_gets_the_fixed_rate(per_period: int) -> None:
    """500 Hz joint states under a 25 Hz policy (or a flood of 10 kHz): there is no phase to
    follow; the loop keeps its own grid at exactly the nominal rate."""
    n = 200 * per_period
    arrivals = np.arange(n) * PERIOD / per_period + 1.0
    record, stats, loop, _ = run_loop(arrivals, 150)
    woken = np.array([w for _, w in record])
    # The loop starts expecting one sample a period; the first ticks show otherwise.
    assert np.diff(woken)[:3].min() > PERIOD * 0.9
    np.testing.assert_allclose(np.diff(woken)[3:], PERIOD, atol=1e-9)
    assert not loop.locked and stats.counts["samples_repeated"] == 0


def test_an_overrunning_tick_is_a_miss_and_the_loop_does_not_burst() -> None:
    """A tick whose work takes 2.5 periods: it and the sample it ran wholly over are misses
    (that sample skipped); the loop then acts on the newest sample at once, without catch-up
    ticks, and on each sample as it arrives after that."""
    arrivals = np.arange(400) * PERIOD + 1.0
    record, stats, _, _ = run_loop(arrivals, 200, overrun={60: 2.5 * PERIOD})
    woken = np.array([w for _, w in record])
    assert stats.counts["misses"] == 2 and stats.counts["samples_skipped"] == 1
    # No burst: each tick acted on a sample of its own (the tick after the overrun on the
    # newest, late by the half period the work ran past it).
    newest = np.searchsorted(arrivals, woken, side="right") - 1
    assert (np.diff(newest) >= 1).all()
    lag = lag_after_sample(record, arrivals)
    assert lag[62:].max() < 1e-5


class SlowReader:
    """`Samples` whose first wait takes a late sample (the previous tick's, after its watchdog)
    and reads until past this tick's watchdog (a flood's bad observations behind it)."""

    def __init__(self, clock: SimClock, late: float, read_until: float):
        self.clock, self.late, self.read_until = clock, late, read_until
        self.calls: list[tuple[float, float]] = []  # (until, the clock when called)

    @property
    def count(self) -> int:
        return len(self.calls)

    def wait(self, until: float) -> float | None:
        self.calls.append((until, self.clock.t))
        if len(self.calls) == 1:
            self.clock.t = self.read_until
            return self.late
        self.clock.t = max(self.clock.t, until)
        return None

    def acted(self) -> None:
        pass


def test_a_wait_that_read_past_its_watchdog_ticks_without_reading_on() -> None:
    """Measured in the soak: a wait took the previous sample, late, and its reading ran past
    the watchdog. Another wait, already due, would read all that is queued before the tick
    (2.8 ms past the watchdog, the tick then past the next sample): it ticks at once, as the
    watchdog's, on the late sample."""
    clock = SimClock()
    expected = 10.0
    closes = expected + WINDOW * PERIOD
    clock.t = expected - PERIOD / 2
    samples = SlowReader(clock, late=expected - 0.7 * PERIOD, read_until=closes + 0.0003)
    loop = SampleLockedLoop(PERIOD, Stats(clock=clock), samples, clock=clock, spin_s=0.0)
    woke, due, arrival, timed = loop.wait_sample(expected)
    assert samples.calls == [(closes, expected - PERIOD / 2)]  # no second wait
    assert (woke, due, arrival, timed) == (closes + 0.0003, closes, expected - 0.7 * PERIOD, True)
    # Before the watchdog, a late sample does not end the wait: it waits on for its own.
    clock.t = expected - PERIOD / 2
    loop.samples = samples = SlowReader(clock, late=expected - 0.7 * PERIOD,
                                        read_until=expected - 0.001)
    assert loop.wait_sample(expected) == (closes, closes, expected - 0.7 * PERIOD, True)
    assert [until for until, _ in samples.calls] == [closes, closes]


def test_arrival_signal_reports_each_sample_once_across_threads() -> None:
    """The ROS node's hand-over: a callback thread notes samples, the loop's thread waits."""
    signal = ArrivalSignal()
    assert signal.wait(time.monotonic() + 0.01) is None
    stamps: list[float] = []

    def callback() -> None:
        for _ in range(3):
            time.sleep(0.02)
            stamps.append(time.monotonic())
            signal.note(stamps[-1])

    t = threading.Thread(target=callback)
    t.start()
    got = [signal.wait(time.monotonic() + 1.0) for _ in range(3)]
    t.join()
    assert got == stamps and signal.count == 3
    signal.note(5.0)
    signal.acted()
    assert signal.wait(time.monotonic() + 0.01) is None


# -- a simulator's clock (ROS /clock under use_sim_time) ------------------------------------


class PacedClock:
    """A simulator's clock: `speed` × real time from its start, stepped back by `back` seconds
    after `reset_after` seconds of its own time; counts its readings."""

    def __init__(self, speed: float, reset_after: float = float("inf"), back: float = 0.0):
        self.start, self.speed = time.monotonic(), speed
        self.reset_after, self.back = reset_after, back
        self.reads = 0

    def __call__(self) -> float:
        self.reads += 1
        t = (time.monotonic() - self.start) * self.speed
        return t - self.back if t > self.reset_after else t


def test_a_stepped_clock_never_goes_back_and_keeps_the_clocks_pace() -> None:
    """A simulator reset steps its clock back; the loop's view stands still at the step and goes
    on from there at the clock's pace, and counts the step."""
    raw = iter([1.0, 2.0, 3.0, 0.5, 0.6, 0.7, 0.2, 0.4])
    view = SteppedClock(lambda: next(raw))
    seen = [view() for _ in range(8)]
    assert seen == pytest.approx([1.0, 2.0, 3.0, 3.0, 3.1, 3.2, 3.2, 3.4])
    assert view.steps_back == 2


def test_a_wait_on_a_slower_clock_ends_on_that_clock_and_does_not_spin() -> None:
    """At half real time, 60 ms of the simulator's clock take 120 ms of real time: the wait
    ends no earlier than the deadline on the simulator's clock, reading it about once a
    millisecond (SIM_CLOCK_POLL_S), not spinning on it, nor sleeping 60 ms of real time and
    reading it once."""
    start = time.monotonic()  # before the simulator's clock starts
    clock = PacedClock(speed=0.5)
    loop = FixedRateLoop(PERIOD, Stats(clock=clock), clock=clock, spin_s=0.0,
                         max_sleep_s=SIM_CLOCK_POLL_S)
    woken = loop.wait_until(0.06)
    assert woken >= 0.06 and time.monotonic() - start >= 0.12
    assert 10 < clock.reads < 0.5 / SIM_CLOCK_POLL_S  # a spin reads it millions of times


def test_an_arrival_wait_on_a_slower_clock_times_out_on_that_clock() -> None:
    start = time.monotonic()
    clock = PacedClock(speed=0.5)
    samples = ArrivalSignal(clock, max_sleep_s=SIM_CLOCK_POLL_S)
    assert samples.wait(0.03) is None
    assert clock() >= 0.03 and time.monotonic() - start >= 0.06
    samples.note(clock())
    assert samples.wait(0.0) is not None and samples.count == 1


def test_the_sample_locked_loop_ticks_on_through_a_simulator_reset() -> None:
    """A 25 Hz loop on a simulator's clock that steps back 10 s after 0.3 s (a reset), seen
    through a SteppedClock: 25 ticks span 24 periods of the simulator's time, as without the
    step; read directly, the loop would wait out the 10 s (its grid is ahead of the clock)."""
    clock = PacedClock(speed=1.0, reset_after=0.3, back=10.0)
    view = SteppedClock(clock)
    stats = Stats(clock=view)
    loop = SampleLockedLoop(PERIOD, stats, ArrivalSignal(view, SIM_CLOCK_POLL_S), clock=view,
                            spin_s=0.0, max_sleep_s=SIM_CLOCK_POLL_S)
    ticks: list[float] = []
    loop.run(lambda _deadline, now: ticks.append(now), threading.Event(), max_ticks=25)
    assert view.steps_back >= 1
    span = ticks[-1] - ticks[0]
    assert 23 * PERIOD <= span < 24 * PERIOD + 2.0  # the grid kept; the 10 s not waited out


@pytest.mark.parametrize(("slow", "fired"), [
    (set(), [5, 10, 15, 20]),  # time to spare on every tick: on the tick it falls due
    ({5, 6, 15}, [7, 10, 16, 20]),  # the first tick with time to spare after it falls due
    (set(range(1, 21)), [10, 20]),  # never any: a whole interval late, not never
])
def test_spare_time_work_waits_for_a_tick_with_time_to_spare(slow: set[int],
                                                             fired: list[int]) -> None:
    period, now = 0.01, [0.0]
    spare = SpareTime(5, period, clock=lambda: now[0])
    got = []
    for tick in range(1, 21):
        deadline = tick * period
        # The tick ends 0.3 of a period after its deadline, or 0.7 when slow (0.3 spare < 0.5).
        now[0] = deadline + (0.7 if tick in slow else 0.3) * period
        if spare.now(tick, deadline):
            got.append(tick)
    assert got == fired
    with pytest.raises(ValueError, match="at least 1"):
        SpareTime(0, period)
