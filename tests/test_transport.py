"""The wire format and the ZMQ transport: property tests of the decoder and goal validation, and
real sockets on loopback (a runtime process fed garbage, goals, and a robot that goes silent)."""

from __future__ import annotations

import math
import subprocess
import sys
import time
from pathlib import Path

import msgpack
import numpy as np
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from robot_fixtures import export_policy, observation

from crl.runtime import robot_config
from crl.runtime.closed_loop import free_base_port
from crl.runtime.controller import Controller
from crl.runtime.messages import (
    MAX_MESSAGE_BYTES,
    REASONS,
    Action,
    Goal,
    MessageError,
    Observation,
    SequenceGuard,
    decode,
    encode,
)
from crl.runtime.policy import load_policy
from crl.runtime.transport import Endpoints, RobotLink, Stamper, action_reader, send_goal

# Control loops at real rate in real processes: `make test` runs these after the parallel pass,
# with no other test beside them (pyproject's `realtime` marker).
pytestmark = pytest.mark.realtime

KINDS = (Observation, Action, Goal)
VALID = encode(observation())


@given(st.binary(max_size=2048))
@settings(max_examples=400, deadline=None)
def test_random_bytes_are_refused_with_a_reason(data: bytes) -> None:
    for cls in KINDS:
        try:
            decode(data, cls)
        except MessageError as e:
            assert e.reason in REASONS


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


@given(st.lists(st.tuples(st.integers(0, 2), st.integers(0, 50)), max_size=60))
def test_sequence_guard_accepts_only_newer_messages(events: list[tuple[int, int]]) -> None:
    guard = SequenceGuard()
    last: tuple[int, int] | None = None
    for i, (session, seq) in enumerate(events):  # stamps increase with i
        msg = Observation(session, seq, float(i), ("a",), np.zeros(1), np.zeros(1))
        newer = last is None or session != last[0] or seq > last[1]
        assert guard.accept(msg) == newer
        if newer:
            last = (session, seq)
    # A message from another session with an older stamp (a stale sender still sending) is not
    # taken for a restart.
    if last is not None:
        old = Observation(last[0] + 1, 999, -1.0, ("a",), np.zeros(1), np.zeros(1))
        assert not guard.accept(old)


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


def publish(link: RobotLink, obs: Observation) -> Observation:
    session, seq, stamp = link.stamper.next()
    msg = Observation(session, seq, stamp, obs.joint_names, obs.joint_pos, obs.joint_vel)
    link.publish_observation(msg)
    return msg


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
        time.sleep(0.3)
        deadline = time.monotonic() + 60
        while actions.poll(20) is None:  # the runtime starts on our first observation
            publish(robot, observation())
            assert time.monotonic() < deadline and proc.poll() is None, proc.stderr
        # Good observations at the control rate, each followed by garbage the runtime must drop.
        bad = [b"\xc1", b"", msgpack.packb({"v": 1}), encode(observation())[:-3],
               msgpack.packb({**msgpack.unpackb(VALID), "joint_pos": [math.nan, 0.0, 0.0]})]
        for k in range(40):
            publish(robot, observation())
            robot._obs.socket.send(bad[k % len(bad)])  # raw bytes on the robot's own stream
            time.sleep(1 / hz)
        seen: list[Action] = []
        deadline = time.monotonic() + 60  # a hang guard, not a speed bound
        while not (len(seen) >= 5 and all(a.safe for a in seen[-5:])):
            seen += actions.drain(20)
            assert time.monotonic() < deadline and proc.poll() is None, "no safe action"
        safe = [a for a in seen if a.safe]
        # The actions name the observation they answer: the last one was acted on for at most
        # the staleness limit's ticks and 2 more, then only the safe action went out.
        last = max(a.obs_seq for a in seen)
        on_last = [i for i, a in enumerate(seen) if not a.safe and a.obs_seq == last]
        assert 1 <= len(on_last) <= limit_periods + 2, len(on_last)
        assert all(a.safe for a in seen[on_last[-1] + 1:])
        np.testing.assert_allclose(safe[-1].values, safe[0].values)  # holding still
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
        proc.send_signal(2)
        out, err = proc.communicate(timeout=30)
        robot.close()
        ctx.destroy(linger=0)
    assert proc.returncode == 0, err
    assert "stale stops 1" in out, out  # the summary line counts the one stop
    # The final statistics: garbage dropped by reason, the policy's goal kept.
    assert "goal rejections 0" in out


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
        proc.send_signal(2)
        proc.communicate(timeout=30)
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
