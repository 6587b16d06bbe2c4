"""`crl-train analyze`: the critic's value heatmap and the episode embeddings.

The core (`value_grid`, `pca_2d`) is tested exactly with injected φ/ψ whose answer is known;
the state constructions on the real reacher (inverse kinematics) and ant U-maze (base placed,
walls skipped); and the command end to end on a reacher run of two iterations.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

jax = pytest.importorskip("jax", reason="crl-train analyze needs the train extra")

from jax_helpers import small_quick_reacher  # noqa: E402

from crl.train import analyze, cli  # noqa: E402
from crl.train.config import TrainConfig  # noqa: E402


def _position_critic(columns: slice) -> tuple[analyze.PhiPi, analyze.Psi]:
    """φ(s, π(s, g)) = the position held in `columns` of the observation, ψ(g) = g: then
    V(s, g) = −‖position − goal‖, largest at the grid point nearest the goal."""
    return (lambda obs, goal: np.asarray(obs)[:, columns]), (lambda goal: np.asarray(goal))


# ------------------------------------------------------------------------------------ the core


def test_the_value_is_largest_at_the_grid_point_nearest_the_goal() -> None:
    grid = analyze.make_grid((-1.0, -2.0), (3.0, 1.0), 21)
    obs = np.concatenate([grid.points, np.ones((21, 21, 3))], axis=-1)  # position + other fields
    valid = np.ones((21, 21), bool)
    valid[:3, :] = False  # an excluded strip (a wall) stays NaN
    goal = np.array([0.93, -0.41])
    phi_pi, psi = _position_critic(slice(0, 2))
    values = analyze.value_grid(phi_pi, psi, obs, valid, goal)

    assert np.isnan(values[~valid]).all() and np.isfinite(values[valid]).all()
    np.testing.assert_allclose(values[valid], -np.linalg.norm(grid.points[valid] - goal, axis=-1),
                               rtol=1e-6, atol=1e-6)
    nearest = grid.points.reshape(-1, 2)[np.argmin(np.linalg.norm(grid.points - goal, axis=-1))]
    assert analyze.argmax_point(grid, values) == pytest.approx(tuple(nearest))
    assert np.nanmax(values) == pytest.approx(-np.linalg.norm(nearest - goal), abs=1e-6)


def test_pca_keeps_a_planar_cloud_and_puts_psi_on_the_positive_side() -> None:
    rng = np.random.default_rng(0)
    plane = rng.normal(size=(200, 2)) * [3.0, 1.0]
    basis = np.linalg.qr(rng.normal(size=(8, 8)))[0][:, :2]
    points = plane @ basis.T + 5.0
    anchor = -4.0 * basis[:, 0] - 2.0 * basis[:, 1] + 5.0  # on the negative side of the data
    projection = analyze.pca_2d(points, anchor)
    assert projection.explained_variance.sum() == pytest.approx(1.0)
    assert projection.explained_variance[0] > projection.explained_variance[1]
    assert (projection(anchor) >= 0).all()
    # Distances within the plane are kept: the projection is a rotation (and reflection).
    np.testing.assert_allclose(np.linalg.norm(projection(points) - projection(points[:1]), axis=1),
                               np.linalg.norm(plane - plane[:1], axis=1), atol=1e-9)


# ------------------------------------------------------------------------- states on the grid


def test_reacher_grid_puts_the_fingertip_on_each_reachable_point() -> None:
    from crl.sim import tasks

    env = tasks.make("reacher", dr="off")
    goal = np.array([0.12, -0.1])
    states = analyze.grid_states(env, 15, goal)
    assert states is not None and states.reach is not None
    radius = np.linalg.norm(states.grid.points, axis=-1)
    # Out of reach (beyond both links, or nearer than the elbow's joint limit allows): skipped.
    assert not states.valid[radius > states.reach[3] + 1e-9].any()
    assert not states.valid[radius < 0.05].any()
    assert states.valid[(radius > 0.08) & (radius < 0.19)].all()
    posed = analyze.states_at(env, states.qpos[states.valid], goal, jax.random.PRNGKey(0))
    np.testing.assert_allclose(np.asarray(posed.achieved_goal), states.grid.points[states.valid],
                               atol=1e-5)
    np.testing.assert_allclose(np.asarray(posed.goal), np.broadcast_to(goal, (states.valid.sum(),
                                                                               2)), atol=1e-7)


def test_ant_u_maze_heatmap_skips_walls_and_draws_them(tmp_path: Path) -> None:
    from crl.sim import tasks

    env = tasks.make("ant_u_maze", dr="off")
    layout = env.layout
    goal = np.array(layout.cell_center(*layout.goal_cells()[-1]))
    states = analyze.grid_states(env, 25, goal)
    assert states is not None and len(states.walls) == len(layout.wall_cells())
    walls = set(layout.wall_cells())
    inside = np.array([[layout.cell_of(*p) in walls for p in row] for row in states.grid.points])
    assert inside.any() and (states.valid == ~inside).all()

    posed = analyze.states_at(env, states.qpos[states.valid], goal, jax.random.PRNGKey(0))
    np.testing.assert_allclose(np.asarray(posed.achieved_goal), states.grid.points[states.valid],
                               atol=1e-5)
    obs = np.zeros((*states.valid.shape, env.spec.obs_dim), np.float32)
    obs[states.valid] = np.asarray(posed.obs)
    phi_pi, psi = _position_critic(slice(0, 2))  # the ant observes base_pos first
    values = analyze.value_grid(phi_pi, psi, obs, states.valid, goal)
    assert np.isnan(values[inside]).all() and np.isfinite(values[~inside]).all()
    nearest = states.grid.points[np.unravel_index(
        np.argmin(np.linalg.norm(states.grid.points - goal, axis=-1)), states.valid.shape)]
    assert analyze.argmax_point(states.grid, values) == pytest.approx(tuple(nearest))
    path = analyze.plot_value_heatmap(states, values, goal, "ant_u_maze", tmp_path / "h.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_robot_of_neither_kind_gets_no_grid() -> None:
    """The 7-DoF arm has no floating base and is no planar two-joint arm: no heatmap."""
    from crl.sim import tasks

    assert analyze.grid_states(tasks.make("arm_reach", dr="off"), 5, np.zeros(3)) is None


# ---------------------------------------------------------------------------------- the command


def tiny_reacher_config() -> TrainConfig:
    """The quick preset at a test's size: two iterations of 8 envs x 16 steps."""
    return small_quick_reacher(num_envs=8, iterations=2, eval_every=2, eval_episodes=4,
                               buffer_steps=64, min_replay_steps=16)


@pytest.fixture(scope="module")
def reacher_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A reacher run to analyze: a copy of the quickstart run `make test` trains (the folder
    beside CRL_DEMO_POLICY's export), else a tiny one trained here."""
    from crl.train.trainer import train

    run_dir = tmp_path_factory.mktemp("runs") / "reacher"
    given = os.environ.get("CRL_DEMO_POLICY")
    quickstart = Path(given).parent / "reacher" if given else None
    if quickstart is not None and (quickstart / "config.json").is_file():
        shutil.copytree(quickstart, run_dir)
    else:
        train(tiny_reacher_config(), run_dir, progress=False)
    return run_dir


@pytest.mark.slow
def test_analyze_cli_writes_heatmap_embeddings_and_json(reacher_run: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    import matplotlib.image

    out = tmp_path / "analysis"
    argv = ["analyze", "--run", str(reacher_run), "--grid", "17", "--goal", "0.1", "-0.12",
            "--out", str(out), "--seed", "3"]
    assert cli.main(argv) == 0
    data = json.loads((out / analyze.JSON_FILE).read_text())
    assert (data["task"], data["seed"], data["goal"]) == ("reacher", 3, pytest.approx([0.1, -0.12]))
    heat = data["heatmap"]
    assert heat["grid"]["size"] == 17 and 0 < heat["grid"]["valid_points"] < 17 * 17
    assert heat["value_min"] <= heat["value_at_goal"] <= heat["value_max"] <= 0.0
    assert heat["argmax_distance_to_goal"] == pytest.approx(
        float(np.linalg.norm(np.array(heat["argmax"]) - [0.1, -0.12])))
    assert heat["placement_error_max"] < 1e-4
    emb = data["embeddings"]
    assert emb["steps"] == 50 and 0.0 < sum(emb["explained_variance"]) <= 1.0 + 1e-9
    for name in (analyze.HEATMAP_FILE, analyze.EMBEDDINGS_FILE):
        image = matplotlib.image.imread(out / name)
        assert image.ndim == 3 and image.shape[0] > 200 and image.std() > 0.01
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [analyze.JSON_FILE, analyze.HEATMAP_FILE, analyze.EMBEDDINGS_FILE])  # no temporaries
    printed = capsys.readouterr().out
    assert "value max at" in printed and str(out / analyze.JSON_FILE) in printed


@pytest.mark.slow
def test_analyze_defaults_to_the_runs_folder_and_the_episodes_goal(reacher_run: Path) -> None:
    result = analyze.analyze_run(reacher_run, grid=5)
    assert Path(result["json"]) == reacher_run / analyze.ANALYSIS_DIR / analyze.JSON_FILE
    assert len(result["goal"]) == 2 and result["embeddings"]["steps"] == 50


@pytest.mark.slow
def test_analyze_refuses_a_goal_of_the_wrong_size(reacher_run: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["analyze", "--run", str(reacher_run), "--goal", "0.1", "--out", str(tmp_path / "a")]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("crl-train: error: goal: ") and "\n" not in err
    assert not (tmp_path / "a").exists()


@pytest.mark.parametrize("argv", [["--run", "{tmp}/missing"], ["--run", "{tmp}", "--grid", "1"]])
def test_analyze_cli_mistakes_are_one_line_and_exit_2(argv: list[str], tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["analyze", *[a.format(tmp=tmp_path) for a in argv]]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("crl-train: error: ") and "\n" not in err, err


def test_help_names_the_analyze_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    out = capsys.readouterr().out
    assert "crl-train analyze --run DIR" in out and "crl-train eval --run DIR" in out
