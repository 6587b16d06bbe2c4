"""The closed loop: an exported policy on the MuJoCo sim robot, robot and runtime as separate
processes talking over loopback ZMQ, as `crl-run closed-loop` and a robot user run them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("jax", reason="the sim robot draws its dynamics with the MJX env (the "
                                  "train extra, not in the robot's install)")

import zmq
from robot_fixtures import export_policy, interrupt

from crl.runtime import robot_config
from crl.runtime.messages import Action
from crl.runtime.transport import Endpoints, action_reader, status_reader
from crl.testbed.closed_loop import free_base_port

# Control loops at real rate in real processes: `make test` runs these after the parallel pass,
# with no other test beside them (pyproject's `realtime` marker).
pytestmark = pytest.mark.realtime

DEMO_POLICY_ENV = "CRL_DEMO_POLICY"  # `make test` points it at the quickstart policy it trains


@pytest.fixture(scope="session")
def demo_policy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The quickstart policy: `make test` trains it once with the repo's own commands and names
    it in CRL_DEMO_POLICY; without that, it is trained here the same way (about 5 minutes)."""
    given = os.environ.get(DEMO_POLICY_ENV)
    if given:
        path = Path(given)
        assert path.is_file(), f"{DEMO_POLICY_ENV}={given}: no such file"
        return path
    out = tmp_path_factory.mktemp("demo")
    bin_dir = Path(sys.executable).parent
    subprocess.run([bin_dir / "crl-train", "reacher", "--preset", "quick", "--out",
                    out / "reacher"], check=True, stdout=subprocess.DEVNULL)
    subprocess.run([bin_dir / "crl-export", "onnx", "--run", out / "reacher", "--best",
                    "--out", out / "reacher.onnx"], check=True, stdout=subprocess.DEVNULL)
    return out / "reacher.onnx"


def closed_loop(policy: Path, out: Path, *flags: str) -> dict[str, Any]:
    """`crl-run closed-loop` on the reacher with `flags`; its JSON result."""
    r = subprocess.run(
        [sys.executable, "-m", "crl.runtime.cli", "closed-loop", "--policy", str(policy),
         "--task", "reacher", *flags, "--out", str(out)], capture_output=True, text=True,
        timeout=900)
    assert r.returncode == 0, r.stderr
    print(r.stdout)
    result: dict[str, Any] = json.loads(out.read_text())
    return result


@pytest.mark.slow
def test_quickstart_policy_reaches_held_out_goals_in_the_closed_loop(demo_policy: Path,
                                                                     tmp_path: Path) -> None:
    """20 goals under held-out dynamics (unseen masses, gains, damping, noise, delays), each
    held for one episode: at least 90% end within the success radius."""
    result = closed_loop(demo_policy, tmp_path / "closed_loop.json", "--dr", "held-out",
                         "--seed", "0", "--goals", "20")
    assert len(result["goals"]) == 20
    assert result["success_rate"] >= 0.9, result["goals"]
    assert result["exit_codes"] == {"crl-run serve": 0, "crl-sim robot": 0}
    runtime = result["runtime"]
    assert runtime["stale_stops"] == 0 and runtime["nonfinite_actions"] == 0
    assert runtime["goal_rejections"] == 0 and runtime["goals_accepted"] >= 20
    assert result["robot_end_to_end_ms"]["samples"] > 0
    # The oscillation figure from the commands the robot took: every goal had steps near it.
    assert 0.0 <= result["oscillation"] <= 1.0
    assert sum(g["flip_chances"] for g in result["goals"]) > 0


@pytest.mark.slow
@pytest.mark.parametrize("ppm", [10000, -10000])
def test_the_loop_stays_on_the_samples_of_a_robot_whose_clock_drifts(
        demo_policy: Path, tmp_path: Path, ppm: int) -> None:
    """The sim robot's clock 1% fast or slow (the most `--clock-ppm` takes; a crystal's 100 ppm
    takes a hundred times longer to drift as far): in 16 s it runs 160 ms, four control periods,
    ahead or behind. A loop whose phase was set once would act on samples ever older, through
    every phase of the period (a median age of half a period, 20 ms); this one follows the
    robot's clock, so each action answers a sample just taken, and no sample slips past unseen
    or is used twice. Behind, the robot's stamps fall 160 ms behind this computer's clock, past
    the 120 ms staleness limit: ages at arrival take the offset out, so none reads stale."""
    result = closed_loop(demo_policy, tmp_path / "closed_loop.json", "--dr", "off", "--goals",
                         "8", "--clock-ppm", str(ppm))
    assert result["clock_ppm"] == ppm
    runtime, period_ms = result["runtime"], 1000 / 25
    assert runtime["stale_stops"] == 0, runtime
    # The robot's own measurement: its sample's stamp → the answering action's arrival.
    assert result["robot_end_to_end_ms"]["p50"] < period_ms / 4, result["robot_end_to_end_ms"]
    assert runtime["end_to_end_p50_ms"] < period_ms / 4, runtime
    # A slip (a watchdog tick, then two samples in one tick) needs a robot stalled beyond the
    # window; a shared CI VM may do that once or twice, never at each of four periods' drift.
    assert runtime["samples_skipped"] + runtime["samples_repeated"] <= 2, runtime


def _start(argv: list[str]) -> subprocess.Popen[str]:
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})


def _sim_robot(port: int) -> subprocess.Popen[str]:
    return _start([sys.executable, "-m", "crl.sim.cli", "robot", "reacher", "--dr", "held-out",
                   "--seed", "1", "--port", str(port)])


def _collect(actions: object, statuses: object, seconds: float) -> tuple[list[Action], set[str]]:
    seen: list[Action] = []
    modes: set[str] = set()
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        seen += actions.drain(20)  # type: ignore[attr-defined]
        status = statuses.poll()  # type: ignore[attr-defined]
        if status is not None:
            modes.add(str(status.stats["mode"]))
    return seen, modes


@pytest.mark.slow
def test_killing_the_sim_robot_sends_the_safe_action_and_a_new_one_resumes(
    tmp_path: Path,
) -> None:
    """SIGKILL the sim robot mid-run: the safe action goes out within 2 control ticks after the
    staleness limit's (counted in ticks, which a busy machine delays but cannot add), the runtime
    keeps sending it, and when a new sim robot appears the policy comes back through a soft
    start."""
    policy = export_policy(tmp_path / "reacher.onnx")  # what acts does not matter here
    port = free_base_port()
    ep = Endpoints(port=port)
    limit_periods = 3  # reacher.yaml's max_observation_age, in control periods
    robot = _sim_robot(port)
    serve = _start([sys.executable, "-m", "crl.runtime.cli", "serve", "--policy", str(policy),
                    "--robot", "reacher", "--port", str(port), "--goal", "0.1", "0.1", "--wait",
                    "180", "--quiet"])
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    actions, statuses = action_reader(ctx, ep), status_reader(ctx, ep)
    second = None
    try:
        deadline = time.monotonic() + 180  # the sim robot compiles its reset first
        running: list[Action] = []
        while not any(not a.safe for a in running):
            running += actions.drain(100)
            assert time.monotonic() < deadline and serve.poll() is None and robot.poll() is None
        seen, _ = _collect(actions, statuses, 1.0)
        assert seen and not any(a.safe for a in seen[5:])  # the policy is acting
        robot.send_signal(signal.SIGKILL)
        robot.wait(30)
        dead: list[Action] = []
        deadline = time.monotonic() + 60  # a hang guard, not a speed bound
        while not (len(dead) >= 8 and all(a.safe for a in dead[-8:])):
            dead += _collect(actions, statuses, 0.2)[0]
            assert time.monotonic() < deadline and serve.poll() is None, "no safe action"
        # The actions name the observation they answer: the robot's last one was acted on for
        # at most the staleness limit's ticks and 2 more, then only the safe action went out:
        # holding still where the robot was last measured (`hold`), reached from the policy's
        # last command under the rate limit (the farthest target is 3 steps away).
        sent = seen + dead
        last = max(a.obs_seq for a in sent)
        on_last = [i for i, a in enumerate(sent) if not a.safe and a.obs_seq == last]
        assert 1 <= len(on_last) <= limit_periods + 2, len(on_last)
        after_stop = sent[on_last[-1] + 1:]
        assert all(a.safe for a in after_stop)
        held = np.array([a.values for a in sent[on_last[-1]:]])
        max_change = robot_config.load("reacher").safety.max_action_change
        assert max_change is not None
        assert (np.abs(np.diff(held, axis=0)) <= max_change + 1e-9).all()
        np.testing.assert_allclose(held[-4:], np.repeat(held[-1:], 4, axis=0))
        # A new sim robot on the same ports: the runtime resumes, ramping in.
        second = _sim_robot(port)
        deadline = time.monotonic() + 180
        resumed: list[Action] = []
        modes: set[str] = set()
        while not any(not a.safe for a in resumed):
            got, m = _collect(actions, statuses, 0.2)
            resumed, modes = resumed + got, modes | m
            assert time.monotonic() < deadline and second.poll() is None and serve.poll() is None
        _, m = _collect(actions, statuses, 1.0)
        assert "soft_start" in modes | m
    finally:
        out, err = interrupt(serve, robot, second)
        ctx.destroy(linger=0)
    assert serve.returncode == 0, err
    assert "stale stops 1" in out, out
