"""The wire format and the ZMQ transport: property tests of the decoder and goal validation, and
real sockets on loopback (a runtime process fed garbage, goals, and a robot that goes silent)."""

from __future__ import annotations

import contextlib
import math
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import msgpack
import numpy as np
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from robot_fixtures import export_policy, interrupt, observation

from crl.runtime import robot_config, transport
from crl.runtime.controller import Controller
from crl.runtime.messages import (
    FUTURE_TOLERANCE_S,
    MAX_DETAIL_CHARS,
    MAX_MESSAGE_BYTES,
    REASONS,
    SESSION_QUIET_S,
    Action,
    Goal,
    GoalReply,
    MessageError,
    Observation,
    SequenceGuard,
    Status,
    decode,
    encode,
)
from crl.runtime.policy import load_policy
from crl.runtime.serve import STATUS_HZ, ServeOptions, serve
from crl.runtime.transport import (
    GOAL_FRAMES_PER_TICK,
    MAX_GOALS_PER_TICK,
    WIRE_LIMIT,
    Endpoints,
    Reader,
    RobotLink,
    RuntimeLink,
    Stamper,
    action_reader,
    send_goal,
    status_reader,
)
from crl.testbed.closed_loop import free_base_port

# Control loops at real rate in real processes: `make test` runs these after the parallel pass,
# with no other test beside them (pyproject's `realtime` marker).
pytestmark = pytest.mark.realtime

KINDS = (Observation, Action, Goal)
T = TypeVar("T")
VALID = encode(observation())


@given(st.binary(max_size=2048))
@settings(max_examples=400, deadline=None)
def test_random_bytes_are_refused_with_a_reason(data: bytes) -> None:
    for cls in KINDS:
        try:
            decode(data, cls)
        except MessageError as e:
            assert e.reason in REASONS


@pytest.mark.parametrize("changes", [
    {"v": True}, {"v": 1.0},  # equal to 1 in Python, not the integer version
    {b"": 1, "surprise": 2},  # a bytes key beside an unknown one (sorting them raised)
])
def test_a_loose_version_or_a_bytes_key_is_a_schema_refusal(changes: dict[Any, Any]) -> None:
    raw = {**msgpack.unpackb(VALID), **changes}
    with pytest.raises(MessageError) as e:
        decode(msgpack.packb(raw, use_bin_type=True), Observation)
    assert e.value.reason == "schema"


@given(st.integers(min_value=0, max_value=len(VALID) - 1))
def test_truncated_messages_are_refused(cut: int) -> None:
    with pytest.raises(MessageError):
        decode(VALID[:cut], Observation)


def test_oversized_messages_are_refused_before_parsing() -> None:
    with pytest.raises(MessageError) as e:
        decode(b"\x00" * (MAX_MESSAGE_BYTES + 1), Observation)
    assert e.value.reason == "oversized"


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats()
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                 max_size=4),
    max_leaves=12,
)


@given(st.sampled_from(["joint_names", "joint_pos", "joint_vel", "base_pos", "seq", "stamp",
                        "session", "v", "kind", "surprise"]), json_values)
@settings(max_examples=300, deadline=None)
def test_wrong_types_and_sizes_in_any_field_are_refused(name: str, value: object) -> None:
    raw = msgpack.unpackb(VALID)
    raw[name] = value
    try:
        msg = decode(msgpack.packb(raw), Observation)
    except MessageError as e:
        assert e.reason in REASONS
        return
    # What decodes is well-formed: matching sizes, finite numbers, known fields.
    assert len(msg.joint_pos) == len(msg.joint_vel) == len(msg.joint_names)
    assert np.isfinite(msg.joint_pos).all() and math.isfinite(msg.stamp)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_values_are_refused(bad: float) -> None:
    raw = msgpack.unpackb(VALID)
    raw["joint_pos"] = [bad, 0.0, 0.0]
    with pytest.raises(MessageError) as e:
        decode(msgpack.packb(raw), Observation)
    assert e.value.reason == "nonfinite"
    raw = msgpack.unpackb(VALID)
    raw["stamp"] = bad
    with pytest.raises(MessageError):
        decode(msgpack.packb(raw), Observation)


def test_extension_types_are_refused() -> None:
    raw = msgpack.unpackb(VALID)
    raw["joint_pos"] = [msgpack.ExtType(42, b"x"), 0.0, 0.0]
    with pytest.raises(MessageError) as e:
        decode(msgpack.packb(raw), Observation)
    assert e.value.reason == "malformed"


def test_decoding_interns_no_text_from_the_input() -> None:
    """msgpack interns every text map key it reads: a stream of goals with 100 new field names
    each grew and rebuilt the interpreter's table of interned strings every ~630 goals, a
    2-13 ms stall of the tick that read one (the 60 s soak's misses). Text is read as bytes, so
    a name the decoder returns (here a stats key) is a string of its own, not the table's."""
    key = f"stat-{os.urandom(8).hex()}"
    stats = decode(encode(Status(1, 1, 1.0, {key: 1.0, "note": key})), Status).stats
    assert stats == {key: 1.0, "note": key}
    fresh = "".join(list(key))  # equal to the key, and not interned
    assert sys.intern(fresh) is fresh, "the decoder interned a key from the input"


@pytest.mark.parametrize("where", ["field name", "joint name", "frame"])
def test_text_that_is_not_utf8_is_refused(where: str) -> None:
    """Text is decoded by the decoder itself (not msgpack): bytes that are not UTF-8, in a field
    name or a field's text, are still refused as malformed."""
    marker = "\u00e9" * 3  # a str of 6 bytes, overwritten with bytes that are not UTF-8
    if where == "frame":
        data = encode(Goal(1, 1, 1.0, marker, np.zeros(2)))
    else:
        raw = msgpack.unpackb(VALID)
        if where == "field name":
            raw[marker] = 0
        else:
            raw["joint_names"] = [marker, *raw["joint_names"][1:]]
        data = msgpack.packb(raw)
    data = data.replace(marker.encode(), b"\xff\xfe" * 3)
    with pytest.raises(MessageError) as e:
        decode(data, Goal if where == "frame" else Observation)
    assert e.value.reason == "malformed", e.value


def accept(guard: SequenceGuard, msg: Observation) -> bool:
    """What a reader does: check, then record what it takes."""
    try:
        guard.check(msg)
    except MessageError:
        return False
    guard.record(msg)
    return True


@given(st.lists(st.tuples(st.integers(0, 2), st.integers(0, 50)), max_size=60))
def test_sequence_guard_accepts_only_newer_messages(events: list[tuple[int, int]]) -> None:
    guard = SequenceGuard()
    last: tuple[int, int] | None = None
    for i, (session, seq) in enumerate(events):  # stamps increase with i
        msg = Observation(session, seq, float(i), ("a",), np.zeros(1), np.zeros(1))
        newer = last is None or session != last[0] or seq > last[1]
        assert accept(guard, msg) == newer
        if newer:
            last = (session, seq)
    # A message from another session with an older stamp (a stale sender still sending) is not
    # taken for a restart.
    if last is not None:
        old = Observation(last[0] + 1, 999, -1.0, ("a",), np.zeros(1), np.zeros(1))
        assert not accept(guard, old)


def test_future_stamps_are_refused_and_never_lock_an_input_out() -> None:
    """A stamp far ahead (1e308, or 5 s) is refused as "future" and moves nothing: the next real
    message is taken (measured before: 125 real observations refused after one 5 s ahead)."""
    guard = SequenceGuard()
    assert accept(guard, observation(session=1))
    for lead in (5.0, 1e308):
        with pytest.raises(MessageError) as e:
            guard.check(observation(session=1, stamp=time.time() + lead))
        assert e.value.reason == "future"
        with pytest.raises(MessageError) as e:
            guard.check(observation(session=2, stamp=time.time() + lead))  # another session too
        assert e.value.reason == "future"
    assert accept(guard, observation(session=1))
    # Within the tolerance (clocks that disagree a little) is taken, and holds no other session
    # out: what is remembered is this clock's time.
    assert accept(guard, observation(session=1, stamp=time.time() + FUTURE_TOLERANCE_S * 0.9))
    assert accept(guard, observation(session=3, stamp=time.time() + 0.01))


def test_a_second_sender_cannot_displace_a_live_robot_whatever_its_stamp() -> None:
    """On a one-sender stream (a robot's observations), another session is taken only once the
    followed one is silent: a spoof stamped just ahead (inside the future tolerance) is refused
    while the robot sends (measured before: the controller re-anchored to the spoofed pose and
    commanded a 3.2 rad jump). Goals, from many senders, still take the newest stamp."""
    robot = SequenceGuard(follow_live=True)
    assert accept(robot, observation(session=1))
    for lead in (FUTURE_TOLERANCE_S * 0.4, 5.0, 1e308):
        assert not accept(robot, observation(session=2, stamp=time.time() + lead))
    assert accept(robot, observation(session=1))
    time.sleep(SESSION_QUIET_S * 1.2)  # the robot goes silent (it died): another may take over
    assert accept(robot, observation(session=2))
    goals = SequenceGuard()
    assert accept(goals, observation(session=1))
    assert accept(goals, observation(session=2, stamp=time.time() + 0.01))


@pytest.mark.parametrize("offset", [3600.0, -3600.0, 2.0])
def test_a_one_sender_stream_follows_a_sender_whose_clock_is_off(offset: float) -> None:
    """A robot (or runtime) whose clock is an hour ahead or behind ours, or 2 s ahead: its stream
    is ordered by seq and followed; before, anything over 0.5 s ahead was refused as "future", so
    a robot booted without a clock battery was never served and one whose clock was set back
    refused every action. Replays and reordering are still refused."""
    guard = SequenceGuard(follow_live=True)
    for _ in range(3):
        assert accept(guard, observation(session=1, stamp=time.time() + offset))
    replay = observation(session=1, stamp=time.time() + offset)
    assert accept(guard, replay)
    assert not accept(guard, replay)


def test_a_restarted_sender_whose_clock_stepped_back_is_taken_once_the_old_one_is_quiet() -> None:
    guard = SequenceGuard()
    assert accept(guard, observation(session=1))
    back = time.time() - 3600.0  # the restarted robot's clock is an hour behind
    assert not accept(guard, observation(session=2, stamp=back))  # the old sender just spoke
    time.sleep(SESSION_QUIET_S * 1.2)
    assert accept(guard, observation(session=2, stamp=back + 1.0))
    # The old session does not come back with a replay while the new one is sending...
    assert not accept(guard, observation(session=1, stamp=back))
    # ...and the new one goes on by its own order.
    assert accept(guard, observation(session=2, stamp=back + 2.0))


@given(st.dictionaries(st.text(min_size=1, max_size=1024), st.integers(0, 9), min_size=1,
                       max_size=120))
@settings(max_examples=50, deadline=None)
def test_refusals_are_bounded_whatever_the_input(extra: dict[str, int]) -> None:
    """A goal quoting 60 kB of unknown keys made a 239 kB reply, over the limit: refusals are
    bounded, so the reply that carries one always encodes."""
    raw = {"v": 1, "kind": "goal", "session": 1, "seq": 1, "stamp": 1.0, "frame": "world",
           "values": [0.0, 0.0], **{f"x{k}": v for k, v in extra.items()}}
    data = msgpack.packb(raw)
    if len(data) > MAX_MESSAGE_BYTES:
        return
    with pytest.raises(MessageError) as e:
        decode(data, Goal)
    assert e.value.reason == "schema" and len(str(e.value)) <= MAX_DETAIL_CHARS
    assert len(encode(GoalReply(1, 1, 1.0, False, str(e.value)))) < MAX_MESSAGE_BYTES


def wait_for(poll: Callable[[], T | None], timeout_s: float, what: str) -> T:
    deadline = time.monotonic() + timeout_s
    while (got := poll()) is None:
        assert time.monotonic() < deadline, what
        time.sleep(0.01)
    return got


@contextlib.contextmanager
def observation_link() -> Iterator[tuple[RobotLink, Reader[Observation]]]:
    """A robot's link and the runtime's observation reader, connected: an observation went
    through."""
    ep = Endpoints(port=free_base_port())
    robot = RobotLink(ep)
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    try:
        reader: Reader[Observation] = Reader(ctx, ep.observations, Observation, True)
        wait_for(lambda: publish(robot, observation()) and reader.poll(), 10, "no link")
        yield robot, reader
    finally:
        robot.close()
        ctx.destroy(linger=0)


def test_multipart_observations_are_read_whole_and_refused() -> None:
    with observation_link() as (robot, reader):
        time.sleep(0.05)
        reader.poll()  # what was still on its way
        robot._obs.socket.send_multipart([encode(observation()), encode(observation())])
        robot._obs.socket.send_multipart([b"x"] * 5000)  # more frames than one poll reads
        good = publish(robot, observation())
        got = wait_for(reader.poll, 5, "the observation after the multipart ones")
        assert got.seq == good.seq
        assert reader.counts()["dropped_multipart"] == 2


class FloodingRobot:
    """A robot's observation socket that queues any number of messages: a flood sent in one
    burst is not dropped at the sender (a RobotLink's queue is short, as a control stream's
    should be). ZMQ takes a bound socket's queue length when it binds."""

    def __init__(self, ep: Endpoints):
        self.ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self.socket = self.ctx.socket(zmq.PUB)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.setsockopt(zmq.SNDHWM, 0)
        self.socket.bind(ep.observations)
        self.stamper = Stamper()

    def publish(self) -> int:
        """A good observation; its seq."""
        session, seq, stamp = self.stamper.next()
        obs = observation()
        self.socket.send(encode(Observation(session, seq, stamp, obs.joint_names, obs.joint_pos,
                                            obs.joint_vel)))
        return seq

    def send_bad(self, n: int) -> None:
        for _ in range(n):
            self.socket.send(b"\xc1")  # a byte msgpack never uses: malformed

    def close(self) -> None:
        self.ctx.destroy(linger=0)


def test_a_poll_reads_no_longer_than_its_bounds_and_leaves_the_rest_in_order(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A poll stops reading once it holds a good message (READ_ON_S after it; 0 here) and at its
    `until` once it has read a frame: a flood queued behind a sample does not hold back the tick
    that acts on it. What it leaves is read by the next polls, in order, every message counted."""
    monkeypatch.setattr(transport, "READ_ON_S", 0.0)
    ep = Endpoints(port=free_base_port())
    robot = FloodingRobot(ep)
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    try:
        reader: Reader[Observation] = Reader(ctx, ep.observations, Observation, True)
        wait_for(lambda: robot.publish() and reader.poll(), 10, "no link")
        time.sleep(0.05)
        reader.poll()  # what was still on its way
        before = reader.counts()
        first = robot.publish()
        robot.send_bad(40)
        second = robot.publish()
        time.sleep(0.1)  # all of it queued
        got = reader.poll()
        assert got is not None and got.seq == first
        assert reader.counts()["received"] == before["received"] + 1  # nothing read after it
        assert reader.poll(until=time.monotonic() - 1.0) is None  # past its bound: one frame
        assert reader.counts()["received"] == before["received"] + 2
        got = reader.poll()
        assert got is not None and got.seq == second
        after = reader.counts()
    finally:
        robot.close()
        ctx.destroy(linger=0)
    assert after["received"] == before["received"] + 42
    assert after["dropped_malformed"] == before["dropped_malformed"] + 40


def test_a_flood_behind_every_sample_is_read_and_counted_locked_or_not(
        controller_policy: Path) -> None:
    """`crl-run serve` against a robot that sends 31 bad observations behind each of its own (as
    the soak's floods do), stops a while (the loop loses its lock on the samples and runs on its
    own grid, reading the socket once a tick), then goes on: every bad one is counted, and once
    the robot is back the ticks act on its newest samples again, not on a backlog."""
    hz, behind = 50.0, 31
    ep = Endpoints(port=free_base_port())
    robot = FloodingRobot(ep)
    proc = start_serve(controller_policy, ep.port, "--rate", str(hz), "--goal", "0.1", "0.1")
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    actions, statuses = action_reader(ctx, ep), status_reader(ctx, ep)
    bad, seqs = 0, []

    def send_for(seconds: float) -> None:
        nonlocal bad
        deadline = time.monotonic()
        for _ in range(round(seconds * hz)):
            seqs.append(robot.publish())
            robot.send_bad(behind)
            bad += behind
            deadline += 1.0 / hz
            time.sleep(max(0.0, deadline - time.monotonic()))

    try:
        deadline = time.monotonic() + 60
        while actions.poll(20) is None:  # serve starts on the robot's first observation
            robot.publish()
            assert time.monotonic() < deadline and proc.poll() is None, proc.stderr
        send_for(2.0)
        time.sleep(0.5)  # silent: stale, the lock on its samples lost
        send_for(1.5)
        actions.drain()  # what came before
        send_for(1.0)
        last = actions.drain(100)
        stats = wait_for(lambda: s.stats if (s := statuses.poll(100)) is not None
                         and s.stats["obs_dropped_malformed"] >= bad else None, 5,
                         f"not every one of {bad} bad observations counted")
    finally:
        robot.close()
        _, err = interrupt(proc, timeout=30)
        ctx.destroy(linger=0)
    assert proc.returncode == 0, err
    assert stats["obs_dropped_malformed"] == bad
    assert last and not any(a.safe for a in last), [a.command for a in last if a.safe]
    # Each tick on a sample of the last few periods: the reading kept up with the flood.
    assert max(a.obs_seq for a in last) >= seqs[-1] - 2, (max(a.obs_seq for a in last), seqs[-1])
    assert len({a.obs_seq for a in last}) >= 0.8 * len(last)


def test_a_link_heals_after_an_oversized_message_observations() -> None:
    """ZMQ drops a connection that carried a message over WIRE_LIMIT and never reconnects it
    (measured: the runtime was blind until restarted): the reader re-creates its socket, counted,
    and takes valid messages again within a second."""
    with observation_link() as (robot, reader):
        robot._obs.socket.send(b"\x00" * (WIRE_LIMIT + 1))
        time.sleep(0.05)
        t0 = time.monotonic()
        wait_for(lambda: publish(robot, observation()) and reader.poll(), 1.0,
                 "no observation within 1 s of an oversized one")
        assert reader.counts()["reconnects"] == 1, time.monotonic() - t0


def test_a_link_heals_after_an_oversized_message_actions() -> None:
    """The same for the robot's action reader: a runtime (here a bare socket) that sent one
    over-size action is heard again."""
    ep = Endpoints(port=free_base_port())
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    runtime = ctx.socket(zmq.PUB)
    runtime.setsockopt(zmq.LINGER, 0)
    runtime.bind(ep.actions)
    robot = RobotLink(ep)
    stamper = Stamper()

    def act() -> Action | None:
        session, seq, stamp = stamper.next()
        runtime.send(encode(Action(session, seq, stamp, ("shoulder", "elbow"), np.zeros(2),
                                   "position", False, -1, 0.0)))
        return robot.poll_action(10)

    try:
        wait_for(act, 10, "no link")
        runtime.send(b"\x00" * (WIRE_LIMIT + 1))
        time.sleep(0.05)
        wait_for(act, 1.0, "no action within 1 s of an oversized one")
        assert robot.counters["reconnects"] == 1
    finally:
        robot.close()
        ctx.destroy(linger=0)


@pytest.fixture(scope="module")
def controller_policy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_policy(tmp_path_factory.mktemp("tr") / "reacher.onnx")


@given(st.lists(st.floats(allow_nan=True, allow_infinity=True, width=64), min_size=0,
                max_size=4), st.sampled_from(["world", "map", ""]))
@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_goal_validation_accepts_exactly_the_box(controller_policy: Path, values: list[float],
                                                 frame: str) -> None:
    c = Controller(load_policy(controller_policy), robot_config.load("reacher"))
    ok, reason = c.set_goal(frame, values)
    g = np.asarray(values, dtype=np.float64)
    inside = (frame == "world" and g.shape == (2,) and bool(np.isfinite(g).all())
              and bool(((g >= -0.21) & (g <= 0.21)).all()))
    assert ok == inside, reason
    if not ok:
        assert c.goal is None and c.stats.counts["goal_rejections"] == 1


# -- real sockets ----------------------------------------------------------------------------


def start_serve(policy: Path, port: int, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "crl.runtime.cli", "serve", "--policy", str(policy), "--robot",
         "reacher", "--port", str(port), "--quiet", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def publish(link: RobotLink, obs: Observation, clock_shift: float = 0.0) -> Observation:
    """`obs` in the link's session and order, stamped by its clock `clock_shift` s off ours."""
    session, seq, stamp = link.stamper.next()
    msg = Observation(session, seq, stamp + clock_shift, obs.joint_names, obs.joint_pos,
                      obs.joint_vel)
    link.publish_observation(msg)
    return msg


def await_first_action(robot: RobotLink, actions: Reader[Action],
                       proc: subprocess.Popen[str]) -> None:
    """Publish until `crl-run serve` answers: it starts on the robot's first observation."""
    time.sleep(0.3)
    deadline = time.monotonic() + 60
    while actions.poll(20) is None:
        publish(robot, observation())
        assert time.monotonic() < deadline and proc.poll() is None, proc.stderr


def test_runtime_drops_bad_messages_keeps_running_and_goes_safe_when_the_robot_stops(
    controller_policy: Path,
) -> None:
    """A serving runtime, a robot (this test) that sends good and bad observations, then stops:
    the safe action goes out within 2 control ticks after the staleness limit's, and keeps
    going out. Counted in ticks, not seconds: a busy machine delays ticks, it cannot add any."""
    port = free_base_port()
    ep = Endpoints(port=port)
    hz, limit_periods = 20.0, 3  # period 50 ms; reacher.yaml's staleness limit, in periods
    proc = start_serve(controller_policy, port, "--rate", str(hz), "--goal", "0.1", "0.1")
    robot = RobotLink(ep)
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    actions = action_reader(ctx, ep)
    try:
        await_first_action(robot, actions, proc)
        # Good observations at the control rate, each followed by garbage the runtime must drop.
        bad = [b"\xc1", b"", msgpack.packb({"v": 1}), encode(observation())[:-3],
               msgpack.packb({**msgpack.unpackb(VALID), "joint_pos": [math.nan, 0.0, 0.0]})]
        for k in range(40):
            publish(robot, observation())
            robot._obs.socket.send(bad[k % len(bad)])  # raw bytes on the robot's own stream
            time.sleep(1 / hz)
        seen: list[Action] = []
        deadline = time.monotonic() + 60  # a hang guard, not a speed bound
        while not (len(seen) >= 8 and all(a.safe for a in seen[-8:])):
            seen += actions.drain(20)
            assert time.monotonic() < deadline and proc.poll() is None, "no safe action"
        # The actions name the observation they answer: the last one was acted on for at most
        # the staleness limit's ticks and 2 more, then only the safe action went out.
        last = max(a.obs_seq for a in seen)
        on_last = [i for i, a in enumerate(seen) if not a.safe and a.obs_seq == last]
        assert 1 <= len(on_last) <= limit_periods + 2, len(on_last)
        assert all(a.safe for a in seen[on_last[-1] + 1:])
        # Holding still where the robot was last measured (`hold`), reached from the policy's
        # last command under the rate limit: the farthest target is 3 steps away.
        after = np.array([a.values for a in seen[on_last[-1]:]])
        max_change = robot_config.load("reacher").safety.max_action_change
        assert max_change is not None
        assert (np.abs(np.diff(after, axis=0)) <= max_change + 1e-9).all()
        measured = observation()  # the pose every observation above carried
        pose = dict(zip(measured.joint_names, measured.joint_pos, strict=True))
        np.testing.assert_allclose(after[-4:], [[pose[j] for j in seen[-1].joints]] * 4)
        # The robot returns (a new session, as after a restart): the runtime resumes.
        robot.close()
        robot = RobotLink(ep)
        time.sleep(0.3)
        resumed: list[Action] = []
        for _ in range(20):
            publish(robot, observation())
            time.sleep(1 / hz)
            resumed += actions.drain(0)
        assert any(not a.safe for a in resumed)
    finally:
        out, err = interrupt(proc, timeout=30)
        robot.close()
        ctx.destroy(linger=0)
    assert proc.returncode == 0, err
    assert "stale stops 1" in out, out  # the summary line counts the one stop
    # The final statistics: garbage dropped by reason, the policy's goal kept.
    assert "goal rejections 0" in out


def test_serve_rides_through_a_robot_clock_set_back(controller_policy: Path) -> None:
    """The robot's clock is set back 2 s in mid-session (NTP, a quick reboot keeping its
    session): every later stamp's lag is 2 s larger. At most the observation that shows the step
    reads stale; the next ones are acted on (`StampAges`: else each would read 2 s old, past the
    150 ms limit, for the 10 s window). Then it is set 5 s forward, 3 s ahead of ours: served
    (it was refused as "future" beyond 0.5 s)."""
    port = free_base_port()
    ep = Endpoints(port=port)
    hz = 20.0
    proc = start_serve(controller_policy, port, "--rate", str(hz), "--goal", "0.1", "0.1")
    robot = RobotLink(ep)
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    actions = action_reader(ctx, ep)

    def send(shift: float, ticks: int) -> list[Action]:
        got: list[Action] = []
        for _ in range(ticks):
            publish(robot, observation(), clock_shift=shift)
            time.sleep(1 / hz)
            got += actions.drain(0)
        return got

    try:
        await_first_action(robot, actions, proc)
        before = send(0.0, 20)
        assert not before[-1].safe
        after = send(-2.0, 40)
        stepped = [a for a in after if a.obs_stamp < time.time() - 1.0]
        assert len(stepped) >= 30, "the stepped observations were not answered"
        assert sum(a.safe for a in stepped) <= 2, [a.safe for a in stepped]
        assert not stepped[-1].safe
        # Set 5 s ahead of this computer's clock (lags fall: no step to see): still served.
        ahead = [a for a in send(3.0, 20) if a.obs_stamp > time.time() + 1.0]
        assert len(ahead) >= 15 and not any(a.safe for a in ahead), [a.safe for a in ahead]
    finally:
        out, err = interrupt(proc, timeout=30)
        robot.close()
        ctx.destroy(linger=0)
    assert proc.returncode == 0, err
    assert "stale stops 0" in out or "stale stops 1" in out, out


def test_goals_are_answered_a_few_a_tick_and_a_refused_one_locks_nothing_out() -> None:
    """A runtime's goal socket (in this process, with a handler that takes |x| <= 0.2): each call
    answers at most MAX_GOALS_PER_TICK requests (20k queued goals stalled the loop 246-422 ms),
    and a goal refused by the handler, stamped as far ahead as the tolerance allows, does not
    make the next valid goal "out_of_order"."""
    ep = Endpoints(port=free_base_port())
    link = RuntimeLink(ep)
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()

    def handler(g: Goal) -> tuple[bool, str]:
        return (True, "accepted") if bool(np.all(np.abs(g.values) <= 0.2)) else (False, "box")

    def goal(values: tuple[float, float], lead: float = 0.0) -> bytes:
        session, seq, now = Stamper().next()
        return encode(Goal(session, seq, now + lead, "world", np.asarray(values)))

    try:
        flood = ctx.socket(zmq.DEALER)
        flood.setsockopt(zmq.LINGER, 0)
        flood.connect(ep.goals)
        n = 3 * MAX_GOALS_PER_TICK
        for _ in range(n):
            flood.send_multipart([b"", goal((0.1, 0.1))])
        answered = 0
        deadline = time.monotonic() + 10
        while answered < n:
            before = link.goal_counters.received
            link.serve_goals(handler)
            assert link.goal_counters.received - before <= MAX_GOALS_PER_TICK
            while flood.poll(0):
                flood.recv_multipart()
                answered += 1
            assert time.monotonic() < deadline, answered
            time.sleep(0.01)
        req = ctx.socket(zmq.REQ)
        req.setsockopt(zmq.LINGER, 0)
        req.connect(ep.goals)

        def ask(data: bytes) -> GoalReply:
            req.send(data)
            while not req.poll(10):
                link.serve_goals(handler)
            return decode(req.recv(), GoalReply)

        far = ask(goal((0.5, 0.0), lead=FUTURE_TOLERANCE_S * 0.9))
        assert not far.accepted and far.reason == "box"
        assert ask(goal((0.0, 0.1))).accepted
        assert link.counters["goal_dropped_out_of_order"] == 0
        # A request of more frames than a tick reads is read over several and refused whole.
        flood.send_multipart([b"", goal((0.1, 0.1)), *[b"x"] * (10 * GOAL_FRAMES_PER_TICK)])
        assert ask(goal((0.1, 0.0))).accepted
        reply = flood.recv_multipart()
        assert not decode(reply[-1], GoalReply).accepted
        assert link.counters["goal_dropped_multipart"] == 1
    finally:
        link.close()
        ctx.destroy(linger=0)


def test_an_input_that_raises_is_counted_and_the_loop_still_acts(
    controller_policy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever goes wrong in an input's handling (here every goal poll raises), each tick
    still publishes an action at the control rate, and the failures are counted."""
    hz = 25.0
    ep = Endpoints(port=free_base_port())

    def broken(self: RuntimeLink, handler: object) -> None:
        raise RuntimeError("a bug in goal handling")

    monkeypatch.setattr(RuntimeLink, "serve_goals", broken)
    controller = Controller(load_policy(controller_policy), robot_config.load("reacher"),
                            rate_hz=hz)
    assert controller.set_goal("world", [0.1, 0.1])[0]
    robot = PacedRobot(ep, hz)
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    actions = action_reader(ctx, ep)
    final: dict[str, float | int | str] = {}
    server = threading.Thread(target=lambda: final.update(
        serve(controller, ServeOptions(ep, wait_s=30, seconds=2.0))))
    try:
        server.start()
        # The loop starts on the robot's first observation: let the action reader join the
        # runtime's (just bound) action stream first, so it sees every tick's action.
        time.sleep(0.5)
        robot.start()
        server.join(60)
        seen = actions.drain(0)
    finally:
        robot.stop.set()
        robot.join(10)
        ctx.destroy(linger=0)
    assert not server.is_alive() and final, "serve did not finish"
    ticks = int(final["ticks"])
    assert int(final["input_errors"]) >= ticks  # every tick's goal poll failed, counted
    assert int(final["policy_errors"]) == 0 and not all(a.safe for a in seen)
    gaps = np.diff([a.stamp for a in seen])
    assert len(seen) >= ticks and gaps.max() <= 3 / hz, (len(seen), ticks, gaps.max())


@pytest.mark.parametrize("slow_every", [(0, 1), (0, 1, 2, 3, 4)])
def test_a_status_waits_for_a_tick_with_time_to_spare(
    controller_policy: Path, monkeypatch: pytest.MonkeyPatch, slow_every: tuple[int, ...]
) -> None:
    """A status falls due every `status_every` ticks; one that falls due on a tick that leaves
    less than STATUS_SLACK of a period goes out on the next tick with time to spare, and never
    more than a status interval late (here the slow ticks, by tick count modulo status_every,
    are `slow_every`: some, then all of them)."""
    hz = 25.0
    every = round(hz / STATUS_HZ)
    ep = Endpoints(port=free_base_port())
    controller = Controller(load_policy(controller_policy), robot_config.load("reacher"),
                            rate_hz=hz)
    assert controller.set_goal("world", [0.1, 0.1])[0]
    act = controller.policy.act

    def slow_act(x: object, g: object) -> object:
        if controller.stats.counts["ticks"] % every in slow_every:
            time.sleep(0.75 / hz)  # ends with a quarter period to spare at most
        return act(x, g)

    monkeypatch.setattr(controller.policy, "act", slow_act)
    statuses: list[int] = []
    serve_beside_a_robot(controller, ep, hz, 3.0, lambda s: statuses.append(int(s["ticks"])))
    assert len(statuses) >= 3, statuses
    if len(slow_every) < every:  # each went out on the first tick with time to spare
        fast = min(set(range(every)) - set(slow_every))
        assert all(t % every == fast for t in statuses), statuses
        assert np.diff(statuses).max() == every, statuses
    else:  # none has time to spare: each goes out a status interval late, not never
        assert all(t % every == 0 for t in statuses), statuses
        assert np.diff(statuses).max() == 2 * every, statuses


def test_the_policy_is_kept_warm_while_the_safe_action_goes_out(
    controller_policy: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """No goal yet: every tick sends the safe action, and the policy still runs after it, on
    every tick with time to spare and at least every other (its result dropped, uncounted in its
    latency), so the first action on the first goal finds it warm; a policy that raises there
    stops nothing."""
    hz = 25.0
    ep = Endpoints(port=free_base_port())
    controller = Controller(load_policy(controller_policy), robot_config.load("reacher"),
                            rate_hz=hz)
    act = controller.policy.act
    calls = [0]

    def counted(x: object, g: object) -> object:
        calls[0] += 1
        if calls[0] % 2:
            raise RuntimeError("a backend that fails now and then")
        return act(x, g)

    monkeypatch.setattr(controller.policy, "act", counted)
    final = serve_beside_a_robot(controller, ep, hz, 1.5)
    ticks = int(final["ticks"])
    assert ticks >= 20 and int(final["safe_ticks"]) >= ticks  # no goal: all safe
    assert calls[0] >= 1 + ticks // 2  # the warm-up, then after every other safe tick at least
    assert controller.stats.policy_latency.count == 0 and int(final["policy_errors"]) == 0
    err = capsys.readouterr().err  # its first call failed: said once, with what to try
    assert err.count("failed its first call (RuntimeError") == 1 and "crl-run bench" in err


def serve_beside_a_robot(controller: Controller, ep: Endpoints, hz: float, seconds: float,
                         on_status: Callable[[dict[str, float | int | str]], None] | None = None
                         ) -> dict[str, float | int | str]:
    """`serve` for `seconds` on its own thread against a PacedRobot; its final statistics."""
    robot = PacedRobot(ep, hz)
    final: dict[str, float | int | str] = {}
    server = threading.Thread(target=lambda: final.update(
        serve(controller, ServeOptions(ep, wait_s=30, seconds=seconds), on_status=on_status)))
    try:
        server.start()
        robot.start()
        server.join(60)
    finally:
        robot.stop.set()
        robot.join(10)
    assert not server.is_alive() and final, "serve did not finish"
    return final


class PacedRobot(threading.Thread):
    """A robot that publishes an observation every period from its own thread (a ZMQ socket
    belongs to one thread); `inject` queues raw messages for it to send after the next one."""

    def __init__(self, ep: Endpoints, hz: float):
        super().__init__(daemon=True)
        self.link, self.period = RobotLink(ep), 1.0 / hz
        self.injections: queue.Queue[Callable[[RobotLink], bytes]] = queue.Queue()
        self.stop = threading.Event()

    def inject(self, make: Callable[[RobotLink], bytes]) -> None:
        self.injections.put(make)

    def run(self) -> None:
        try:
            while not self.stop.wait(self.period):
                publish(self.link, observation())
                while not self.injections.empty():
                    self.link._obs.socket.send(self.injections.get()(self.link))
        finally:
            self.link.close()


def test_no_message_stops_blocks_or_blinds_serve(controller_policy: Path) -> None:
    """Each message that stopped, stalled or blinded `crl-run serve` (issue 23, measured 1-5),
    against the real process: it stays up, answers, counts each under its reason, takes valid
    input again at once, and never leaves more than 3 control periods between two actions."""
    hz = 25.0
    period = 1.0 / hz
    port = free_base_port()
    ep = Endpoints(port=port)
    proc = start_serve(controller_policy, port, "--rate", str(hz), "--goal", "0.1", "0.1")
    robot = PacedRobot(ep, hz)
    robot.start()
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    actions, statuses = action_reader(ctx, ep), status_reader(ctx, ep)
    seen: list[Action] = []

    def watch(seconds: float) -> list[Action]:
        """The actions published over the next `seconds`."""
        n, end = len(seen), time.monotonic() + seconds
        while time.monotonic() < end:
            seen.extend(actions.drain(10))
            assert proc.poll() is None, proc.communicate()[1]
        return seen[n:]

    def ask(frames: list[bytes]) -> tuple[bytes, GoalReply]:
        req = ctx.socket(zmq.REQ)
        req.setsockopt(zmq.LINGER, 0)
        req.connect(ep.goals)
        req.send_multipart(frames)
        assert req.poll(5000), "no answer"
        data = req.recv()
        req.close()
        return data, decode(data, GoalReply)

    def goal(stamp: float | None = None, values: tuple[float, float] = (0.05, 0.05)) -> bytes:
        session, seq, now = Stamper().next()
        return encode(Goal(session, seq, now if stamp is None else stamp, "world",
                           np.asarray(values)))

    try:
        deadline = time.monotonic() + 60
        while not seen:  # the runtime starts on the robot's first observation
            seen.extend(actions.drain(20))
            assert time.monotonic() < deadline and proc.poll() is None, "no action"
        # 1. A goal in two frames: read whole, refused, answered.
        _, reply = ask([goal(), goal()])
        assert not reply.accepted and reply.reason.startswith("multipart"), reply.reason
        # 2. A goal quoting 60 kB of unknown keys: a bounded refusal.
        raw = {**msgpack.unpackb(goal()), **{f"k{i}" + "x" * 500: 0 for i in range(110)}}
        data, reply = ask([msgpack.packb(raw)])
        assert not reply.accepted and "schema" in reply.reason and len(data) < 1024
        # 3. A goal stamped 1e308 (in the box) is refused and locks nothing out.
        _, reply = ask([goal(stamp=1e308)])
        assert not reply.accepted and reply.reason.startswith("future"), reply.reason
        assert send_goal(ep, [0.05, -0.05], "world").accepted
        # ...nor does an observation stamped 5 s ahead, in the robot's own session: taken (a
        # robot's clock may be off by any amount), read as fresh, and the ones after it too.
        taken = max(a.obs_seq for a in watch(0.2))

        def ahead(link: RobotLink) -> bytes:
            session, seq, now = link.stamper.next()
            obs = observation()
            return encode(Observation(session, seq, now + 5.0, obs.joint_names, obs.joint_pos,
                                      obs.joint_vel))

        robot.inject(ahead)
        after = watch(0.5)
        assert max(a.obs_seq for a in after) > taken + 5 and not any(a.safe for a in after)
        # 4. 20k queued goals: a few answered a tick; a goal from another sender still answered.
        flood = ctx.socket(zmq.DEALER)
        flood.setsockopt(zmq.LINGER, 0)
        flood.setsockopt(zmq.SNDHWM, 0)
        flood.connect(ep.goals)
        burst = goal(values=(0.1, 0.1))
        for _ in range(20_000):
            flood.send_multipart([b"", burst])
        watch(1.0)
        assert send_goal(ep, [0.0, 0.1], "world").accepted
        # 5. One observation over ZMQ's size limit: the link heals within a second.
        robot.inject(lambda link: b"\x00" * (WIRE_LIMIT + 1))
        before = max(a.obs_seq for a in watch(0.1))
        healed = [a for a in watch(1.2) if a.obs_seq > before + 1 and not a.safe]
        assert healed, "no action on a new observation within 1 s of an oversized one"
        stats = wait_for(lambda: s.stats if (s := statuses.poll(100)) is not None
                         and s.stats["obs_reconnects"] else None, 5, "no reconnect counted")
        gaps = np.diff([a.stamp for a in seen])
        assert gaps.max() <= 3 * period, (gaps.max(), period)
        assert all(np.isfinite(a.values).all() for a in seen)
    finally:
        robot.stop.set()
        robot.join(10)
        _, err = interrupt(proc, timeout=30)
        ctx.destroy(linger=0)
    assert proc.returncode == 0, err
    assert stats["goal_dropped_multipart"] == 1 and stats["goal_dropped_schema"] == 1
    assert stats["goal_dropped_future"] == 1 and stats["obs_dropped_future"] == 0
    assert stats["obs_dropped_out_of_order"] == 0 and stats["obs_reconnects"] == 1
    assert stats["input_errors"] == 0 and stats["tick_errors"] == 0


def test_goal_command_reports_acceptance_and_rejection(controller_policy: Path) -> None:
    port = free_base_port()
    ep = Endpoints(port=port)
    proc = start_serve(controller_policy, port)
    robot = RobotLink(ep)
    try:
        run = [sys.executable, "-m", "crl.runtime.cli", "goal", "--port", str(port)]
        # The first waits for the runtime to come up (ZMQ queues the request until it binds).
        ok = subprocess.run([*run, "--timeout", "60", "0.1", "0.05"], capture_output=True,
                            text=True, timeout=90)
        assert ok.returncode == 0 and "accepted" in ok.stdout, ok.stderr
        far = subprocess.run([*run, "0.5", "0.0"], capture_output=True, text=True, timeout=60)
        assert far.returncode == 2 and "outside the policy's training goal box" in far.stderr
        assert len(far.stderr.strip().splitlines()) == 1
        frame = subprocess.run([*run, "--frame", "map", "0.1", "0.0"], capture_output=True,
                               text=True, timeout=60)
        assert frame.returncode == 2 and "'map'" in frame.stderr
        # Garbage on the goal socket is answered too, and the next goal still works.
        ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        req = ctx.socket(zmq.REQ)
        req.setsockopt(zmq.LINGER, 0)
        req.connect(ep.goals)
        req.send(b"\x92\x01\x02")  # a msgpack list [1, 2], not a goal map
        assert req.poll(5000)
        reply = msgpack.unpackb(req.recv())
        assert reply["accepted"] is False and "schema" in reply["reason"]
        ctx.destroy(linger=0)
        again = send_goal(ep, [0.0, 0.15], "world")
        assert again.accepted
    finally:
        interrupt(proc, timeout=30)
        robot.close()


def test_serve_refuses_a_robot_without_a_needed_joint(controller_policy: Path) -> None:
    port = free_base_port()
    proc = start_serve(controller_policy, port)
    robot = RobotLink(Endpoints(port=port))
    try:
        deadline = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline:
            publish(robot, observation(names=("shoulder",)))
            time.sleep(0.05)
        _, err = proc.communicate(timeout=30)
    finally:
        robot.close()
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 2 and "elbow" in err and len(err.strip().splitlines()) == 2, err


def test_stamper_numbers_in_order() -> None:
    s = Stamper()
    (a_session, a, _), (b_session, b, _) = s.next(), s.next()
    assert a_session == b_session and b == a + 1
    assert Endpoints().is_loopback and not Endpoints(host="0.0.0.0").is_loopback


def test_test_ports_are_drawn_outside_the_ephemeral_range(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A base port in the kernel's ephemeral range can be taken before the server binds it (by
    any connecting socket, or by a peer's retried connect reaching itself): every draw, and all
    five ports from it, fall outside the range the machine reports."""
    from crl.testbed import closed_loop

    range_file = tmp_path / "ip_local_port_range"
    range_file.write_text("21000\t64000\n")
    monkeypatch.setattr(closed_loop, "EPHEMERAL_RANGE_FILE", range_file)
    for _ in range(50):
        base = free_base_port()
        assert base >= closed_loop.LOWEST_PORT and (base + 4 < 21000 or base > 64000)
        assert base + 4 <= 65535
    range_file.write_text("not a range")  # unreadable: the kernel's default range
    assert all(not 32768 - 5 < free_base_port() <= 60999 for _ in range(50))
