"""`crl.runtime.stamps.StampAges`: an observation's age at arrival with the robot clock's offset
and drift taken out, while data that comes with an old stamp still ages."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crl.runtime.stamps import WINDOW_S, StampAges

RATE_HZ = 100.0
DELAY_S = 0.0003  # the transport's quickest delivery
STEP_S = 0.015  # half a 100 Hz policy's staleness limit, as the controllers pass it


def ages(stamps: np.ndarray, arrivals: np.ndarray, session: int = 1,
         tracker: StampAges | None = None, offsets: np.ndarray | None = None) -> np.ndarray:
    """Each observation's age at arrival, stamps on the robot's clock, arrivals on ours, our
    stamp clock `offsets` ahead of the arrivals' (0 unless given)."""
    tracker = tracker or StampAges()
    offsets = np.zeros(len(stamps)) if offsets is None else offsets
    return np.array([tracker.age(session, s, o, a)
                     for s, o, a in zip(stamps, offsets, arrivals, strict=True)])


@pytest.mark.parametrize("ppm", [-100.0, 100.0, -10_000.0])
def test_a_drifting_robot_clock_does_not_age_fresh_data(ppm: float) -> None:
    """10 minutes at 100 Hz from a robot whose clock is 5 s behind ours and drifts: at -100 ppm
    its stamps fall another 60 ms behind, twice a 100 Hz policy's staleness limit (3 periods).
    Every age stays within the delivery jitter plus drift × window (the one-sided error)."""
    rng = np.random.default_rng(0)
    t = np.arange(int(600 * RATE_HZ)) / RATE_HZ  # measurement times on our clock
    stamps = t * (1 + ppm * 1e-6) - 5.0  # the robot's clock: behind, and drifting
    jitter = rng.uniform(0.0, 0.0002, t.size)
    arrivals = t + DELAY_S + jitter
    got = ages(stamps, arrivals)
    assert (got >= 0).all()
    assert got.max() <= 0.0002 + abs(ppm) * 1e-6 * WINDOW_S + 1e-9
    # what arrival - stamp alone would read: the offset, then stale for good
    assert (arrivals - stamps).min() > 4.9


def test_data_resent_with_an_old_stamp_ages() -> None:
    """A frozen sensor: the robot keeps sending its last reading's stamp. The age grows with
    the time since that stamp, past any staleness limit, however long it goes on."""
    t = np.arange(int(60 * RATE_HZ)) / RATE_HZ
    stamps = t - 2.0
    frozen = t >= 20.0
    stamps[frozen] = stamps[~frozen][-1]
    got = ages(stamps, t + DELAY_S)
    since = t[frozen] - t[frozen][0] + 1 / RATE_HZ  # since the last fresh reading
    # its whole age while the fresh readings are in the window, then the window's span
    assert (got[frozen] >= np.minimum(since, WINDOW_S - 2 / RATE_HZ) - 1e-6).all()
    assert got[~frozen].max() < 1e-9


def test_a_late_delivery_reads_late() -> None:
    """One observation held up 50 ms in delivery (a stalled network) reads 50 ms old; those
    around it do not."""
    t = np.arange(1000) / RATE_HZ
    arrivals = t + DELAY_S
    arrivals[500] += 0.05
    got = ages(t - 3.0, arrivals)
    assert got[500] == pytest.approx(0.05)
    assert np.delete(got, 500).max() < 1e-9


def test_a_new_session_starts_over_with_its_own_clock() -> None:
    """A restarted robot whose clock is 2 s further behind: its first observation is fresh, not
    2 s old; the same offset from the old session reads stale (a clock step: once)."""
    tracker = StampAges()
    t = np.arange(100) / RATE_HZ
    ages(t - 1.0, t + DELAY_S, session=1, tracker=tracker)
    later = t + 1.0
    assert ages(later - 3.0, later + DELAY_S, session=2, tracker=tracker).max() < 1e-9
    stale = StampAges()
    ages(t - 1.0, t + DELAY_S, tracker=stale)
    assert ages(later - 3.0, later + DELAY_S, tracker=stale)[0] == pytest.approx(2.0)


def test_a_robot_clock_ahead_of_ours_reads_fresh_never_negative() -> None:
    t = np.arange(100) / RATE_HZ
    got = ages(t + 0.3, t + DELAY_S)
    assert (got >= 0).all() and got.max() < 1e-9
    with pytest.raises(ValueError, match="window_s"):
        StampAges(0.0)
    with pytest.raises(ValueError, match="step_s"):
        StampAges(step_s=-1.0)


def test_one_stamp_far_in_the_future_neither_reads_old_nor_ages_the_rest() -> None:
    """A joint state stamped an hour ahead (a bad driver, a spoof on the topic) reads fresh, and
    the observations after it keep their true ages: had it entered the window, each would read
    an hour old for the window's length."""
    tracker = StampAges(step_s=STEP_S)
    t = np.arange(200) / RATE_HZ
    stamps = t - 1.0
    stamps[100::20] = t[100::20] + 3600.0  # and again every 20th
    got = ages(stamps, t + DELAY_S, tracker=tracker)
    assert got.max() < 1e-9
    assert tracker.steps == 0


def test_a_robot_clock_an_hour_ahead_is_an_offset_like_any_other() -> None:
    """A robot booted without a clock battery, an hour ahead of ours: its data reads fresh, and a
    frozen sensor on it still ages (were stamps ahead of ours read as fresh whatever they were,
    it would never age)."""
    t = np.arange(int(20 * RATE_HZ)) / RATE_HZ
    stamps = t + 3600.0
    frozen = t >= 10.0
    stamps[frozen] = stamps[~frozen][-1]
    got = ages(stamps, t + DELAY_S, tracker=StampAges(step_s=STEP_S))
    assert got[~frozen].max() < 1e-9
    since = t[frozen] - t[frozen][0]
    assert (got[frozen] >= since - 1e-6).all()



@pytest.mark.parametrize("whose", ["robot's set back", "ours set forward"])
def test_a_clock_step_ages_one_observation_not_the_window(whose: str) -> None:
    """A robot clock set back 2 s mid-session (NTP, a reboot in under the window), or this
    computer's set forward 2 s (chrony stepping a Jetson's clock at boot): every later lag is 2 s
    larger. The observation that shows the step reads 2 s old, as a replayed one would; the ones
    after it are fresh. Without the step rule each would read 2 s old for the whole window,
    a stale stop of 10 s."""
    t = np.arange(3000) / RATE_HZ
    stamps, offsets = t - 1.0, np.zeros(t.size)
    if whose == "ours set forward":
        offsets[1500:] += 2.0
    else:
        stamps[1500:] -= 2.0
    tracker = StampAges(step_s=STEP_S)
    got = ages(stamps, t + DELAY_S, tracker=tracker, offsets=offsets)
    assert got[1500] == pytest.approx(2.0)
    assert np.delete(got, 1500).max() < 1e-9
    assert tracker.steps == 1
    no_rule = ages(stamps, t + DELAY_S, tracker=StampAges(step_s=1e9), offsets=offsets)
    assert (no_rule[1500:2500] > 1.99).all()


@pytest.mark.parametrize("whose", ["robot's set forward", "ours set back"])
def test_a_clock_step_the_other_way_reads_fresh_and_a_frozen_sensor_still_ages(
        whose: str) -> None:
    """The other way every lag is smaller: fresh at once. The window takes the new clock, so a
    sensor that freezes just after still ages as it should."""
    t = np.arange(2000) / RATE_HZ
    stamps, offsets = t - 1.0, np.zeros(t.size)
    if whose == "ours set back":
        offsets[1000:] -= 2.0
    else:
        stamps[1000:] += 2.0
    stamps[1200:] = stamps[1199]  # frozen 2 s after the step
    tracker = StampAges(step_s=STEP_S)
    got = ages(stamps, t + DELAY_S, tracker=tracker, offsets=offsets)
    assert got[:1200].max() < 1e-9 and tracker.steps == 1
    since = t[1200:] - t[1199]
    assert got[1200:] == pytest.approx(since)


def test_old_stamps_among_fresh_ones_read_old_every_time() -> None:
    """A second publisher replaying old joint states between the robot's (a bag, a stale
    process), or a message misordered by a second path: each old one reads old, each fresh one
    fresh, however they alternate."""
    t = np.arange(400) / RATE_HZ
    stamps = t - 1.0
    stamps[200::2] -= 0.5  # every other one from t = 2 s is half a second old
    got = ages(stamps, t + DELAY_S, tracker=StampAges(step_s=STEP_S))
    assert got[200::2] == pytest.approx(np.full(100, 0.5), abs=0.011)
    assert got[201::2].max() < 1e-9 and got[:200].max() < 1e-9


def test_a_frozen_sensor_ages_through_jitter_in_our_clocks() -> None:
    """Reading two clocks for one arrival can be split by a preemption: our offset jitters. Below
    `step_s` that is no step, and a frozen sensor's stamp keeps aging."""
    rng = np.random.default_rng(1)
    t = np.arange(int(20 * RATE_HZ)) / RATE_HZ
    stamps = t - 2.0
    frozen = t >= 10.0
    stamps[frozen] = stamps[~frozen][-1]
    offsets = rng.uniform(0.0, 0.9 * STEP_S, t.size)
    tracker = StampAges(step_s=STEP_S)
    got = ages(stamps, t + DELAY_S, tracker=tracker, offsets=offsets)
    since = t[frozen] - t[frozen][0]
    assert (got[frozen] >= since - 0.9 * STEP_S).all()
    assert tracker.steps == 0


@given(st.lists(st.tuples(st.floats(-1e9, 1e9), st.floats(-10.0, 10.0), st.floats(0.0, 20.0),
                          st.integers(0, 2)), max_size=60))
@settings(max_examples=200, deadline=None)
def test_any_stamps_give_ages_that_are_finite_and_never_negative(
        arrivals: list[tuple[float, float, float, int]]) -> None:
    """Whatever a sender stamps (far ahead, far behind, jumping about, sessions changing), an
    age is finite, not negative, and no more than the widest lag difference seen."""
    tracker, now, lags = StampAges(step_s=STEP_S), 0.0, []
    for stamp, offset, gap, session in arrivals:
        now += gap
        lags.append(now + offset - stamp)
        age = tracker.age(session, stamp, offset, now)
        assert math.isfinite(age) and 0.0 <= age <= max(lags) - min(lags) + 1e-6


def test_after_a_gap_longer_than_the_window_stale_data_still_reads_old() -> None:
    """The robot goes silent for 15 s (a cable pulled, its driver paused), longer than the
    window, and comes back resending its last reading, or with a backlog from before the gap.
    Each such observation reads its true age, the first included: a window started afresh on
    it would read it fresh, and the resent ones fresh for as long as the staleness limit."""
    t = np.arange(int(5 * RATE_HZ)) / RATE_HZ
    tracker = StampAges(step_s=STEP_S)
    assert ages(t - 1.0, t + DELAY_S, tracker=tracker).max() < 1e-9
    back = t[-1] + 15.0 + np.arange(50) / RATE_HZ  # 0.5 s of the last reading, resent
    got = ages(np.full(back.size, t[-1] - 1.0), back + DELAY_S, tracker=tracker)
    assert (got >= back - t[-1] - 1e-6).all()
    backlog = StampAges(step_s=STEP_S)
    ages(t - 1.0, t + DELAY_S, tracker=backlog)
    stamps = back - 1.0
    stamps[0] -= 13.0  # the backlog's newest, from 13 s before the robot came back
    got = ages(stamps, back + DELAY_S, tracker=backlog)
    assert got[0] == pytest.approx(13.0)
    assert got[1:].max() < 1e-9
    assert tracker.steps == 0 and backlog.steps == 0


@pytest.mark.parametrize("drift_s", [0.0, 0.005, 0.3, -0.3])
def test_after_a_gap_a_robot_back_on_its_clock_reads_fresh(drift_s: float) -> None:
    """Back after a minute's silence on the clock it had (within `step_s` of it: fresh at once),
    or on one that drifted or was stepped meanwhile: the first observation shows the step and
    reads its lag's difference (old when behind), the rest fresh."""
    t = np.arange(int(5 * RATE_HZ)) / RATE_HZ
    tracker = StampAges(step_s=STEP_S)
    ages(t - 1.0, t + DELAY_S, tracker=tracker)
    back = t[-1] + 60.0 + np.arange(int(5 * RATE_HZ)) / RATE_HZ
    got = ages(back - 1.0 - drift_s, back + DELAY_S, tracker=tracker)
    if abs(drift_s) <= STEP_S:
        assert got.max() <= max(drift_s, 0.0) + 1e-9 and tracker.steps == 0
    else:
        assert got[0] == pytest.approx(max(drift_s, 0.0))
        assert got[1:].max() < 1e-9 and tracker.steps == 1


def test_a_message_delivered_twice_is_one_observation() -> None:
    """An old joint state replayed twice in a row (or a frozen sensor's two copies) does not
    agree with itself on a clock: both copies read old, and the robot's next reads fresh. Were
    a duplicate taken as a second observation, the window would move to the old clock and the
    second copy read fresh."""
    t = np.arange(400) / RATE_HZ
    stamps = t - 1.0
    stamps[[200, 201]] = stamps[100]
    tracker = StampAges(step_s=STEP_S)
    got = ages(stamps, t + DELAY_S, tracker=tracker)
    assert got[[200, 201]] == pytest.approx([1.0, 1.01])
    assert np.delete(got, [200, 201]).max() < 1e-9 and tracker.steps == 0
