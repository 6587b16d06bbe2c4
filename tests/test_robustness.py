"""`crl-train robustness`: the envelope's grid, its robots, its picture and its errors."""

from __future__ import annotations

import json
import os
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from robot_fixtures import export_policy

from crl.sim import tasks
from crl.sim.config import DRConfig
from crl.testbed.robustness import QUANTITIES, Envelope, Grid, Point, RobustnessError
from crl.train.cli import main

SMALL = ["--scales", "0.5", "1", "2", "--noise", "0", "1", "--delays", "0", "2",
         "--episodes", "8"]


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["robustness", *argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(("argv", "says"), [
    ((), "give --run DIR or --policy FILE"),
    (("--run", "a", "--policy", "b"), "give --run DIR or --policy FILE"),
    (("--policy", "p.onnx", "--step", "5"), "--step picks a checkpoint of --run"),
    (("--policy", "p.onnx", "--scales", "0", "1"), "scales: a factor must be positive"),
    (("--policy", "p.onnx", "--noise", "nan"), "noise: give finite values >= 0"),
    (("--policy", "p.onnx", "--delays", "-1"), "delays: give control steps"),
    (("--policy", "p.onnx", "--episodes", "0"), "episodes: between 1 and 100000"),
    (("--policy", "p.onnx", "--threshold", "1.5"), "threshold: in (0, 1]"),
    (("--policy", "p.onnx", "--compare", "missing.json"), "--compare missing.json"),
    (("--policy", "missing.onnx"), "missing.onnx"),
    (("--run", "not-a-run"), "not-a-run"),
])
def test_a_bad_request_is_one_line(argv, says, capsys, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "p.onnx").write_bytes(b"")
    code, _, err = _run(capsys, *argv)
    assert code == 2
    assert err.startswith("crl-train: error: ") and says in err and len(err.splitlines()) == 1


def test_the_envelope_of_a_policy_file_covers_every_quantity(capsys, tmp_path) -> None:
    """A random-weights reacher policy through ONNX Runtime: every quantity at every grid
    value, the task's own ranges to shade, a picture; it fails at nominal, so nothing holds."""
    policy = export_policy(tmp_path / "random.onnx")
    code, out, _ = _run(capsys, "--policy", str(policy), "--out", str(tmp_path / "env"), *SMALL)
    assert code == 0, out
    result = json.loads((tmp_path / "env" / "robustness.json").read_text())
    assert set(result["points"]) == set(QUANTITIES) == set(result["holds"])
    assert [p["value"] for p in result["points"]["actuator_gain"]] == [0.5, 1.0, 2.0]
    assert [p["value"] for p in result["points"]["obs_noise"]] == [0.0, 1.0]
    assert [p["value"] for p in result["points"]["action_delay"]] == [0.0, 2.0]
    config = tasks.make("reacher", dr="off").config
    assert result["ranges"]["actuator_gain"]["train"] == [list(r) for r in
                                                          config.dr_train.actuator_gain]
    assert result["ranges"]["action_delay"]["held_out"] == [[2.0, 2.0]]
    assert result["ranges"]["obs_noise"]["train"] == [[0.0, 1.0]]
    assert result["backend"] == "ort" and result["grid"]["episodes"] == 8
    for points in result["points"].values():
        for p in points:
            assert 0.0 <= p["final_success_rate"] <= p["success_rate"] <= 1.0
            assert 0.0 <= p["oscillation"] <= 1.0 and p["final_distance_median"] >= 0.0
    assert all(span is None for span in result["holds"].values())
    assert "fails at nominal" in out
    assert (tmp_path / "env" / "robustness.png").stat().st_size > 10_000


def test_holds_is_the_run_of_passing_values_around_nominal() -> None:
    def points(rates: list[float], values: list[float]) -> list[Point]:
        return [Point(v, r, r, 0.01, 0.0) for v, r in zip(values, rates, strict=True)]

    env = Envelope("reacher", "p", "ort", Grid(threshold=0.9), ranges={})
    scales = [0.25, 0.5, 1.0, 2.0, 4.0]
    env.points = {
        "friction": points([0.5, 0.95, 0.92, 0.9, 0.3], scales),
        "body_mass": points([0.95, 0.2, 0.95, 0.95, 0.95], scales),  # a gap below nominal
        "actuator_gain": points([0.95, 0.95, 0.5, 0.95, 0.95], scales),  # fails at nominal
        "obs_noise": points([0.93, 0.91, 0.89], [0.0, 1.0, 2.0]),
    }
    assert env.holds() == {"friction": [0.5, 2.0], "body_mass": [1.0, 4.0],
                           "actuator_gain": None, "obs_noise": [0.0, 1.0]}


def test_a_fixed_robot_scales_every_part_by_one_factor() -> None:
    env = tasks.make("reacher", dr="off")
    env.use_ranges(DRConfig(action_delay=(0, 1, 2, 3)))
    m = env.mjx_model
    draw = env.randomizer.fixed(actuator_gain=2.0, body_mass=0.5, action_delay=3)
    np.testing.assert_allclose(draw.actuator_gainprm[:, 0], 2.0 * m.actuator_gainprm[:, 0])
    # A position servo's kp sits in its bias too (-kp·q): both scale, or it would not settle
    # on its target.
    np.testing.assert_allclose(draw.actuator_biasprm[:, 1], 2.0 * m.actuator_biasprm[:, 1])
    np.testing.assert_allclose(draw.body_mass, 0.5 * m.body_mass)
    np.testing.assert_allclose(draw.body_inertia, 0.5 * m.body_inertia)
    np.testing.assert_allclose(draw.dof_damping, m.dof_damping)
    assert int(draw.action_delay) == 3 and float(jnp.max(draw.obs_noise_std)) == 0.0
    # The queue holds the longest delay the ranges name: a command 3 steps old is there.
    assert env.reset(jnp.zeros(2, jnp.uint32)).action_queue.shape[0] == 4


def test_a_grid_refuses_what_cannot_be_measured() -> None:
    with pytest.raises(RobustnessError, match="delays"):
        Grid(delays=()).check()
    with pytest.raises(RobustnessError, match="scales"):
        Grid(scales=(float("inf"),)).check()


@pytest.mark.skipif(not os.environ.get("CRL_DEMO_POLICY"),
                    reason="CRL_DEMO_POLICY unset (make test trains the quickstart policy)")
def test_the_quickstart_policy_holds_at_nominal_and_across_its_training_ranges(
        capsys, tmp_path) -> None:
    """The trained policy holds the goal on the nominal robot and at the training ranges' ends
    (gain 0.9 and 1.1, one step of delay, the training noise): what it was trained for."""
    policy = Path(os.environ["CRL_DEMO_POLICY"])
    code, out, _ = _run(capsys, "--policy", str(policy), "--out", str(tmp_path), "--scales",
                        "0.9", "1", "1.1", "--noise", "0", "1", "--delays", "0", "1",
                        "--episodes", "128")
    assert code == 0, out
    holds = json.loads((tmp_path / "robustness.json").read_text())["holds"]
    assert holds["actuator_gain"] == [0.9, 1.1] and holds["body_mass"] == [0.9, 1.1]
    assert holds["obs_noise"] == [0.0, 1.0] and holds["action_delay"] == [0.0, 1.0]
