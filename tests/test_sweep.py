"""bench/sweep.py, bench/depth_sweep.py and bench/width_vs_depth.py: runs made with the repo's own
crl-train, resumable, one JSON and one PNG, parameters counted from the networks trained."""

from __future__ import annotations

import dataclasses
import functools
import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("jax", reason="the sweep trains with crl-train (the train extra)")

import jax
from robot_fixtures import reacher_spec

from crl.train.checkpoint import load_run
from crl.train.config import PRESETS, NetworkConfig
from crl.train.networks import init_params, make_networks

BENCH = Path(__file__).resolve().parents[1] / "bench"
TINY = "--width 32 --num-envs 16 --eval-every 2048 --eval-episodes 8 --min-replay-steps 16"


def sweep(*args: str, script: str = "sweep.py") -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(BENCH / script), *args], capture_output=True,
                          text=True, timeout=900)


def fake_finished_run(run_dir: Path, time_at_goal: list[float], steps: int, depth: int = 4,
                      width: int = 32) -> None:
    """A run directory as crl-train leaves a finished run (its eval.json, config.json and
    spec.json), made by hand so the summary and plot are tested on known numbers without
    training."""
    run_dir.mkdir(parents=True)
    config = dataclasses.replace(PRESETS["quick"], task="reacher", total_steps=steps,
                                 network=NetworkConfig(depth=depth, width=width, repr_dim=16))
    (run_dir / "config.json").write_text(json.dumps(config.to_dict()))
    (run_dir / "spec.json").write_text(reacher_spec(depth, width).to_json())
    evals = [{"env_steps": round(i * steps / (len(time_at_goal) - 1)),
              "train": {"time_at_goal": t, "success_rate": min(1.0, t / 10)}}
             for i, t in enumerate(time_at_goal)]
    (run_dir / "eval.json").write_text(json.dumps({"task": "reacher", "dr": "train",
                                                   "evaluations": evals}))


@functools.cache
def initialised_params(depth: int, width: int) -> int:
    """Parameters of reacher's actor and critic encoders at that size, as initialised."""
    spec = reacher_spec(depth, width)
    nets = make_networks(NetworkConfig(depth=depth, width=width, repr_dim=16),
                                spec.act_dim)
    params = init_params(nets, jax.random.PRNGKey(0), spec.obs_dim, spec.goal_dim)
    return sum(leaf.size for leaf in jax.tree.leaves(params))


def test_a_sweep_of_finished_runs_summarizes_them_without_training(tmp_path: Path) -> None:
    finals = {(4, 0): 2.0, (4, 1): 4.0, (8, 0): 10.0, (8, 1): 12.0}
    for (depth, seed), final in finals.items():
        fake_finished_run(tmp_path / f"reacher-depth-{depth}-s{seed}", [0.0, final / 2, final],
                          steps=1000, depth=depth)
    r = sweep("reacher", "--axis", "depth", "--values", "4,8", "--seeds", "2", "--steps",
              "1000", "--out", str(tmp_path))
    assert r.returncode == 0, r.stderr
    result = json.loads((tmp_path / "sweep.json").read_text())
    assert [run["how"] for run in result["runs"]] == ["done before"] * 4
    assert [(s["value"], s["mean"], s["std"], s["seeds"]) for s in result["summary"]] == [
        (4, 3.0, 1.0, 2), (8, 11.0, 1.0, 2)]
    assert result["runs"][0]["curves"]["time_at_goal"] == [[0, 0.0], [500, 1.0], [1000, 2.0]]
    assert (tmp_path / "sweep.png").stat().st_size > 0
    # Each run's parameters, per network and in all, as its networks are built.
    first = result["runs"][0]["params"]
    assert set(first) == {"actor", "sa_encoder", "g_encoder", "total"}
    assert first["total"] == first["actor"] + first["sa_encoder"] + first["g_encoder"]
    assert [s["params"] for s in result["summary"]] == [initialised_params(4, 32),
                                                        initialised_params(8, 32)]


def test_width_against_depth_puts_both_sweeps_on_one_parameter_axis(tmp_path: Path) -> None:
    """The depth sweep at --width, the width sweep at --depth, each in its own folder; the JSON
    holds every run's parameter count and the PNG is drawn."""
    for depth, final in ((4, 2.0), (8, 6.0)):
        fake_finished_run(tmp_path / "depth" / f"reacher-depth-{depth}-s0", [0.0, final],
                          steps=1000, depth=depth, width=16)
    for width, final in ((16, 2.0), (32, 3.0)):
        fake_finished_run(tmp_path / "width" / f"reacher-width-{width}-s0", [0.0, final],
                          steps=1000, depth=4, width=width)
    r = sweep("reacher", "--depths", "4,8", "--widths", "16,32", "--depth", "4", "--width", "16",
              "--steps", "1000", "--out", str(tmp_path), script="width_vs_depth.py")
    assert r.returncode == 0, r.stderr
    result = json.loads((tmp_path / "width_vs_depth.json").read_text())
    depth, width = result["sweeps"]["depth"], result["sweeps"]["width"]
    assert [(row["value"], row["mean"], row["params"]) for row in depth["summary"]] == [
        (4, 2.0, initialised_params(4, 16)), (8, 6.0, initialised_params(8, 16))]
    assert [(row["value"], row["mean"], row["params"]) for row in width["summary"]] == [
        (16, 2.0, initialised_params(4, 16)), (32, 3.0, initialised_params(4, 32))]
    assert [run["params"]["total"] for run in width["runs"]] == [
        initialised_params(4, 16), initialised_params(4, 32)]
    for axis in ("depth", "width"):
        assert (tmp_path / axis / "sweep.json").is_file()
    assert (tmp_path / "width_vs_depth.png").stat().st_size > 10_000
    r = sweep("reacher", "--out", str(tmp_path / "clash"), "--train-args=--width 8",
              script="width_vs_depth.py")
    assert r.returncode == 2 and "--width is set by --depth/--width" in r.stderr, r.stderr


def test_a_sweep_refuses_a_run_made_with_other_settings(tmp_path: Path) -> None:
    run_dir = tmp_path / "reacher-depth-4-s0"
    fake_finished_run(run_dir, [0.0, 1.0], steps=1000)
    (run_dir / "sweep_args.json").write_text(json.dumps(["reacher", "--width", "64"]))
    r = sweep("reacher", "--values", "4", "--steps", "1000", "--out", str(tmp_path))
    assert r.returncode == 1 and r.stderr.count("\n") == 1, r.stderr
    assert "other settings" in r.stderr and "--out" in r.stderr


@pytest.mark.parametrize("axis, flag", [("actor-depth", "--actor-depth"),
                                        ("critic-depth", "--critic-depth")])
def test_actor_and_critic_depth_axes_set_their_own_flag(tmp_path: Path, axis: str,
                                                         flag: str) -> None:
    """The actor-versus-critic ablation: each value is passed as the side's flag (a run made
    with any other arguments would be refused), while --depth in --train-args still sizes the
    other side."""
    for depth in (4, 8):
        run_dir = tmp_path / f"reacher-{axis}-{depth}-s0"
        fake_finished_run(run_dir, [0.0, float(depth)], steps=1000)
        (run_dir / "sweep_args.json").write_text(json.dumps([
            "reacher", "--preset", "quick", "--seed", "0", "--total-steps", "1000", flag,
            str(depth), "--depth", "16", "--out", str(run_dir)]))
    r = sweep("reacher", "--axis", axis, "--values", "4,8", "--preset", "quick", "--steps",
              "1000", "--out", str(tmp_path), "--train-args=--depth 16")
    assert r.returncode == 0, r.stderr
    result = json.loads((tmp_path / "sweep.json").read_text())
    assert result["axis"] == axis
    assert [(s["value"], s["mean"]) for s in result["summary"]] == [(4, 4.0), (8, 8.0)]
    r = sweep("reacher", "--axis", axis, "--out", str(tmp_path / "clash"),
              f"--train-args={flag} 8")
    assert r.returncode == 2 and f"{flag} is set by the sweep" in r.stderr, r.stderr


@pytest.mark.parametrize("args, says", [
    (["--values", "4,x"], "takes integers"),
    (["--values", "4,4"], "distinct"),
    (["--axis", "residual", "--values", "yes"], "true,false"),
    (["--seeds", "0"], "--seeds"),
    (["--train-args=--depth 8 --width 32"], "--depth is set by the sweep"),
])
def test_settings_that_cannot_work_are_one_line_and_exit_2(tmp_path: Path, args: list[str],
                                                           says: str) -> None:
    r = sweep("reacher", "--out", str(tmp_path), *args)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and says in r.stderr, r.stderr
    assert not list(tmp_path.iterdir())


def test_depth_sweep_trains_with_crl_train_then_resumes_without_retraining(
        tmp_path: Path) -> None:
    args = ["reacher", "--depths", "4", "--preset", "quick", "--steps", "2048", "--out",
            str(tmp_path), f"--train-args={TINY}"]
    r = sweep(*args, script="depth_sweep.py")
    assert r.returncode == 0, r.stderr
    first = json.loads((tmp_path / "sweep.json").read_text())
    run = first["runs"][0]
    assert run["how"] == "trained" and run["curves"]["time_at_goal"][-1][0] >= 2048
    config = json.loads((Path(run["run_dir"]) / "config.json").read_text())
    assert (config["network"]["depth"], config["network"]["width"]) == (4, 32)
    # The parameter count is the trained networks' (the checkpoint's arrays).
    trained = load_run(Path(run["run_dir"])).params
    assert run["params"] == {**{k: sum(x.size for x in jax.tree.leaves(v))
                                for k, v in trained.items()},
                             "total": sum(x.size for x in jax.tree.leaves(trained))}
    assert (tmp_path / "sweep.png").stat().st_size > 0
    eval_json = Path(run["run_dir"]) / "eval.json"
    written = eval_json.stat().st_mtime_ns
    r = sweep(*args, script="depth_sweep.py")
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "sweep.json").read_text())["runs"][0]["how"] == "done before"
    assert eval_json.stat().st_mtime_ns == written
