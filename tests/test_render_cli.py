"""`crl-sim` (info, rollout), offscreen rendering, and the sim throughput bench's smoke mode.

Compiling an MJX rollout is the slow part on a CPU, so only two tests roll out (reacher, in
process: random actions, and a policy as `crl-train eval` passes one) and one runs the bench;
the rest render hand-made states or stop at argument checks.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import mujoco
import numpy as np
import pytest

from crl.core.spec import PolicySpec
from crl.sim import render, tasks
from crl.sim.cli import main

ROOT = Path(__file__).resolve().parents[1]
CRL_SIM = Path(sys.executable).with_name("crl-sim")


@pytest.fixture(scope="module")
def reacher():
    return tasks.make("reacher", dr="off")


def still_trajectory(env, steps: int, goal: np.ndarray) -> render.Trajectory:
    """The model's home pose held for `steps` steps: a trajectory without a rollout."""
    m = env.mj_model
    n = steps + 1
    return render.Trajectory(
        qpos=np.tile(m.qpos0, (n, 1)),
        qvel=np.zeros((n, m.nv)),
        mocap_pos=np.zeros((n, m.nmocap, 3)),
        mocap_quat=np.tile([1.0, 0.0, 0.0, 0.0], (n, m.nmocap, 1)),
        goal=np.tile(goal, (n, 1)),
        achieved_goal=np.zeros((n, len(goal))),
        distance=np.linspace(0.3, 0.0, n),
        success=np.linspace(0.3, 0.0, n) <= env.spec.success_radius,
    )


# -------------------------------------------------------------------------------- info


@pytest.mark.parametrize("task", tasks.TASKS)
def test_info_prints_the_spec(task: str, capsys: pytest.CaptureFixture[str]):
    assert main(["info", task, "--json"]) == 0
    spec = PolicySpec.from_json(capsys.readouterr().out)
    assert spec.task == task
    assert spec.network is None
    assert main(["info", task]) == 0
    pretty = capsys.readouterr().out
    for name in [f.name for f in spec.observation] + list(spec.action.joints):
        assert name in pretty
    assert spec.goal.frame in pretty
    assert "clipped to [low, high]" in " ".join(pretty.split())  # text, not rich markup


def test_unknown_task_is_one_line_and_exit_2():
    # The installed console script, as a user runs it; info on a bad name loads no jax.
    proc = subprocess.run([str(CRL_SIM), "info", "reachr"], capture_output=True, text=True,
                          timeout=120, check=False)
    assert proc.returncode == 2
    assert proc.stdout == ""
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1, proc.stderr
    assert err[0].startswith("crl-sim: error: ") and "'reachr'" in err[0]
    assert all(t in err[0] for t in tasks.TASKS)


def test_rollout_unknown_task(capsys: pytest.CaptureFixture[str]):
    assert main(["rollout", "nope"]) == 2
    assert "reacher" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--policy", "runs/reacher"], "accepted: random"),
        (["--video", "out.avi"], "must end in .mp4"),
        (["--frames", "out.jpg"], "must end in .png"),
        (["--episodes", "0"], "--episodes 0: must be at least 1"),
        (["--width", "4000", "--frames", "x.png"], "size: 4000x240"),
        (["--camera", "side", "--frames", "x.png"], "camera: 'side' is not in the model (its "
         "cameras: top)"),
    ],
)
def test_rollout_user_errors(args: list[str], message: str, tmp_path: Path,
                             capsys: pytest.CaptureFixture[str]):
    args = [str(tmp_path / a) if a.endswith((".avi", ".jpg", ".png")) else a for a in args]
    assert main(["rollout", "reacher", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not list(tmp_path.iterdir())


def test_bad_dr_choice_exits_2():
    with pytest.raises(SystemExit) as e:
        main(["rollout", "reacher", "--dr", "wild"])
    assert e.value.code == 2


# ------------------------------------------------------------------------------ rollout


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:os.fork:RuntimeWarning")  # the test's ffmpeg reader
def test_rollout_writes_video_and_contact_sheet(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]):
    video, sheet = tmp_path / "new" / "dir" / "reacher.mp4", tmp_path / "reacher.png"
    w, h, episodes = 64, 48, 2
    code = main(["rollout", "reacher", "--episodes", str(episodes), "--seed", "3",
                 "--video", str(video), "--frames", str(sheet), "--width", str(w),
                 "--height", str(h), "--json"])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert result["task"] == "reacher" and len(result["episodes"]) == episodes
    env = tasks.make("reacher")  # the rollout's task; its spec says the control rate
    for m in result["episodes"]:
        assert isinstance(m["success"], bool) and isinstance(m["time_at_goal"], int)
        assert 0 <= m["time_at_goal"] <= env.episode_length
        assert m["final_distance"] >= 0.0
        assert m["time_at_goal"] == 0 or m["success"]
    summary = result["summary"]
    assert summary["episodes"] == episodes
    assert summary["final_distance_mean"] == pytest.approx(
        np.mean([m["final_distance"] for m in result["episodes"]]))

    import imageio.v2 as imageio

    stride = max(1, round(env.spec.control_hz / render.VIDEO_FPS_MAX))
    per_episode = len(range(0, env.episode_length + 1, stride))
    with imageio.get_reader(video) as reader:  # its length is unknown (inf): iterate
        frames = [frame for frame in reader]
        fps = reader.get_meta_data()["fps"]
    assert len(frames) == episodes * per_episode
    assert frames[0].shape == (h, w, 3)
    assert fps == pytest.approx(env.spec.control_hz / stride, rel=0.01)
    assert np.std(frames[0]) > 5  # a picture, not a blank buffer

    image = imageio.imread(sheet)
    assert image.shape == sheet_shape(episodes, w, h)
    # Atomic writes leave no temp files behind.
    assert sorted(p.name for p in video.parent.iterdir()) == ["reacher.mp4"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new", "reacher.png"]


def test_rollout_with_a_policy_renders_it(reacher, tmp_path: Path, monkeypatch):
    """What `crl-train eval --frames` does: a jax policy of one (obs, goal) rolled out and
    rendered for real (offscreen GL), writing the contact sheet asked for and nothing else."""
    import imageio.v2 as imageio
    import jax.numpy as jnp

    monkeypatch.chdir(tmp_path)
    calls, phases = [], []

    def policy(obs, goal):  # "hold the home pose"
        calls.append((obs.shape, goal.shape))
        return jnp.zeros(reacher.spec.act_dim)

    w, h = 64, 48
    sheet = tmp_path / "eval" / "sheet.png"
    result = render.render_rollout(reacher, policy, episodes=2, seed=0, frames=sheet, width=w,
                                   height=h, progress=phases.append)
    assert calls and calls[0] == ((reacher.spec.obs_dim,), (reacher.spec.goal_dim,))
    first, second = result["episodes"]
    assert first["final_distance"] != second["final_distance"]  # new start and goal each
    assert result["summary"]["episodes"] == 2
    # Each phase told as it begins (`crl-train eval` shows them).
    assert phases == ["rolling out 2 episodes to render (compiling)", "rendering episode 1/2",
                      "rendering episode 2/2", f"writing {sheet}"]
    image = imageio.imread(sheet)
    gap = render.SHEET_GAP
    assert image.shape == sheet_shape(2, w, h)
    tiles = image[render.SHEET_HEADER:, render.SHEET_LABEL_WIDTH:]
    rows = tiles[:h], tiles[h + gap:]
    assert all(r.std() > 5 for r in rows)  # pictures, not blank buffers
    assert np.abs(rows[0].astype(int) - rows[1].astype(int)).sum() > 0  # two different episodes
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == [
        Path("eval"), Path("eval/sheet.png")]


def test_episode_metrics(reacher):
    # distance 0.3 → 0 over 4 steps: only the last step is within the success radius
    m = render.episode_metrics(still_trajectory(reacher, 4, np.zeros(reacher.spec.goal_dim)))
    assert m == {"success": True, "time_at_goal": 1, "final_distance": 0.0}
    other = {"success": False, "time_at_goal": 0, "final_distance": 1.0}
    assert render.summarize([m, other, other], episode_length=4) == {
        "episodes": 3, "success_rate": pytest.approx(1 / 3), "time_at_goal": pytest.approx(1 / 3),
        "time_at_goal_fraction": pytest.approx(1 / 12), "final_distance_median": 1.0,
        "final_distance_mean": pytest.approx(2 / 3),
    }


# ------------------------------------------------------------------------------ drawing


def test_goal_marker_is_drawn(reacher):
    drawer = render.FrameRenderer(reacher, 64, 48)
    try:
        here = drawer.frame(still_trajectory(reacher, 0, np.array([0.1, 0.1])), 0)
        there = drawer.frame(still_trajectory(reacher, 0, np.array([-0.1, -0.1])), 0)
        same = drawer.frame(still_trajectory(reacher, 0, np.array([0.1, 0.1])), 0)
    finally:
        drawer.close()
    assert here.shape == (48, 64, 3) and here.dtype == np.uint8
    np.testing.assert_array_equal(here, same)
    assert np.abs(here.astype(int) - there.astype(int)).sum() > 0
    # Rendering never changes the env's own model (its shadow map stays as loaded).
    fresh = tasks.make("reacher", dr="off").mj_model
    assert reacher.mj_model.vis.quality.shadowsize == fresh.vis.quality.shadowsize


@pytest.mark.parametrize("task", tasks.TASKS)
def test_every_task_renders_its_robot_and_goal(task: str):
    """Each task's camera frames the robot and the goal marker (the CLI rollout test renders
    only the reacher)."""
    env = tasks.make(task, dr="off")
    m, c = env.mj_model, env.config
    d = mujoco.MjData(m)
    mujoco.mj_forward(m, d)
    here = (d.site(c.goal_name) if c.goal_kind == "site" else d.body(c.goal_name)).xpos
    achieved = np.array([here["xyz".index(a)] for a in c.goal_axes])
    offset = np.zeros_like(achieved)
    offset[0] = 3 * env.spec.success_radius  # beside the robot, inside the camera's view
    drawer = render.FrameRenderer(env, 96, 72)
    try:
        left = drawer.frame(still_trajectory(env, 0, achieved - offset), 0)
        right = drawer.frame(still_trajectory(env, 0, achieved + offset), 0)
    finally:
        drawer.close()
    assert left.shape == (72, 96, 3) and left.std() > 5  # a picture, not a blank
    assert np.abs(left.astype(int) - right.astype(int)).sum() > 0  # the goal marker moved


def test_camera_choice(reacher):
    m = reacher.mj_model
    top = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_CAMERA, "top")
    assert render.choose_camera(m) == 0  # the first camera
    assert render.choose_camera(m, "top") == top
    bare = mujoco.MjModel.from_xml_string("<mujoco><worldbody><geom size='1'/></worldbody>"
                                          "</mujoco>")
    assert isinstance(render.choose_camera(bare), mujoco.MjvCamera)  # free camera
    with pytest.raises(render.RenderError, match="its cameras: none"):
        render.choose_camera(bare, "top")


def test_goal_point_axes():
    np.testing.assert_array_equal(render.goal_point(np.array([1.0, 2.0]), "xy"), [1, 2, 0])
    np.testing.assert_array_equal(render.goal_point(np.array([1.0, 2.0, 3.0]), "xyz"), [1, 2, 3])
    np.testing.assert_array_equal(render.goal_point(np.array([1.0, 2.0]), "xz"), [1, 0, 2])


def sheet_shape(episodes: int, w: int, h: int) -> tuple[int, int, int]:
    """The labelled contact sheet's shape: the header above and the label column left of
    `episodes` rows of SHEET_FRAMES tiles of w x h."""
    gap = render.SHEET_GAP
    return (render.SHEET_HEADER + episodes * (h + gap) - gap,
            render.SHEET_LABEL_WIDTH + render.SHEET_FRAMES * (w + gap) - gap, 3)


def test_achieved_pixel_is_where_the_frame_shows_the_fingertip(reacher):
    """The ring on the contact sheet goes where the renderer drew the point that reaches for
    the goal: the reacher's fingertip, a red sphere, wherever the arm is."""
    drawer = render.FrameRenderer(reacher, 160, 120)
    try:
        for qpos in ([0.0, 0.0], [1.2, -0.8], [-2.5, 1.9]):
            traj = still_trajectory(reacher, 0, np.array([0.5, 0.5]))  # goal out of the way
            traj.qpos[0, :2] = qpos
            image = drawer.frame(traj, 0)
            at = drawer.achieved_pixel()
            assert at is not None
            x, y = round(at[0]), round(at[1])
            r, g, b = image[y - 1:y + 2, x - 1:x + 2].reshape(-1, 3).astype(int).mean(0)
            assert r > 200 and g < 140 and b < 140, (qpos, at, (r, g, b))  # the red fingertip
    finally:
        drawer.close()


def test_project_behind_the_camera_is_none():
    camera = mujoco.MjvGLCamera()
    camera.pos, camera.forward, camera.up = (0, 0, 1), (0, 0, -1), (0, 1, 0)
    camera.frustum_near, camera.frustum_bottom, camera.frustum_top = 0.1, -0.05, 0.05
    assert render.project(camera, np.array([0.0, 0.0, 2.0]), 40, 20) is None
    assert render.project(camera, np.array([0.0, 0.0, 0.0]), 40, 20) == (20.0, 10.0)  # centre
    x, y = render.project(camera, np.array([0.25, 0.5, 0.0]), 40, 20)
    assert (x, y) == (pytest.approx(25.0), pytest.approx(0.0))  # right, and the top edge


def test_labelled_sheet_has_legend_steps_marks_and_rings():
    """The tiles as `contact_sheet` lays them out at the bottom right; a ring at each frame's
    point; each row's mark green (reached) or red (not); text in the header and the labels."""
    h, w, gap = 48, 64, render.SHEET_GAP
    grey = np.full((h, w, 3), 90, np.uint8)
    rows = [[grey] * 3, [grey] * 3]
    rings = [[None, (32.0, 24.0), None], [None] * 3]
    labels = [render.RowLabel("episode 1", True, ("ended 1.0 cm away",)),
              render.RowLabel("episode 2", False, ("ended 9.0 cm away",))]
    legend = [("goal", "goal (2.0 cm success radius)"), ("achieved", "fingertip"),
              ("arrow", "toward the goal")]
    sheet = render.labelled_sheet(rows, rings, ["step 0", "step 25", "step 50"], labels, legend)
    tiles = render.contact_sheet(rows)
    assert sheet.shape == (render.SHEET_HEADER + tiles.shape[0],
                           render.SHEET_LABEL_WIDTH + tiles.shape[1], 3)
    drawn = sheet[render.SHEET_HEADER:, render.SHEET_LABEL_WIDTH:]
    untouched = np.ones(tiles.shape[:2], bool)
    untouched[:h, w + gap:2 * w + gap] = False  # the ringed tile
    np.testing.assert_array_equal(drawn[untouched], tiles[untouched])
    ringed = drawn[:h, w + gap:2 * w + gap].reshape(-1, 3)
    assert (ringed == render.ACHIEVED_RGB).all(axis=1).sum() > 20  # an orange ring
    assert (ringed == 90).all(axis=1).sum() > 0.8 * h * w  # around the frame, not over it

    def colour_near_mark(row: int) -> np.ndarray:
        """The mark sits on the second text line of a row's label."""
        y = render.SHEET_HEADER + row * (h + gap) + 2 + render.SHEET_LINE + render.SHEET_LINE // 2
        return sheet[y - 3:y + 4, 10:17].reshape(-1, 3)

    assert (colour_near_mark(0) == render.REACHED_RGB).all(axis=1).sum() > 10
    assert (colour_near_mark(1) == render.MISSED_RGB).all(axis=1).sum() > 10
    header = sheet[:render.SHEET_HEADER]
    assert (header < 100).all(axis=2).sum() > 200  # the legend's and the steps' text
    label_column = sheet[render.SHEET_HEADER:, :render.SHEET_LABEL_WIDTH]
    assert (label_column < 100).all(axis=2).sum() > 200  # the episodes' text


def test_contact_sheet_tiles_rows():
    a = np.zeros((4, 6, 3), np.uint8)
    b = np.full((4, 6, 3), 7, np.uint8)
    sheet = render.contact_sheet([[a, b], [b, a]], gap=2)
    assert sheet.shape == (10, 14, 3)
    assert (sheet[:4, 8:] == 7).all() and (sheet[4:6] == 255).all()


def test_a_failed_write_keeps_the_previous_file(tmp_path: Path, monkeypatch):
    """A write that fails part-way (a full disk) leaves the previous image and no temp file."""
    target = tmp_path / "x.png"
    target.write_bytes(b"previous")

    def boom(path, image):
        Path(path).write_bytes(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(render.imageio, "imwrite", boom)
    with pytest.raises(OSError, match="disk full"):
        render.write_png(target, np.zeros((4, 4, 3), np.uint8))
    assert target.read_bytes() == b"previous"
    assert list(tmp_path.iterdir()) == [target]


def test_gl_backend_choice(monkeypatch):
    # The choice is exported, so child processes (ffmpeg, the sim robot) inherit it.
    assert os.environ["MUJOCO_GL"] == render.GL_BACKEND
    monkeypatch.setenv("MUJOCO_GL", " OSMesa")  # a user's choice is kept, not probed over
    assert render.select_gl_backend() == "osmesa" and os.environ["MUJOCO_GL"] == " OSMesa"
    assert not render._backend_works("no-such-backend")


def test_gl_backend_when_mujoco_came_first():
    # The trainer imports the env (and mujoco) before it renders: the choice must still hold.
    code = (
        "import mujoco\n"
        "from crl.sim import render\n"
        "m = mujoco.MjModel.from_xml_string('<mujoco><worldbody><geom size=\"1\"/>"
        "</worldbody></mujoco>')\n"
        "r = mujoco.Renderer(m, 16, 16)\n"
        "d = mujoco.MjData(m)\n"
        "mujoco.mj_forward(m, d)\n"
        "r.update_scene(d)\n"
        "assert r.render().std() > 0\n"
        "r.close()\n"
        "print(render.GL_BACKEND)\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("MUJOCO_GL", "PYOPENGL_PLATFORM")}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() in render.HEADLESS_BACKENDS


# -------------------------------------------------------------------------------- bench


@pytest.mark.slow
def test_bench_quick_writes_json(tmp_path: Path):
    out = tmp_path / "results" / "quick.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "sim_throughput.py"), "--quick", "--out", str(out)],
        capture_output=True, text=True, timeout=300, check=False, cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = json.loads(out.read_text())
    assert set(data) >= {"benchmark", "date", "device", "versions", "config", "results"}
    assert set(data["device"]) >= {"platform", "kind", "cpu_model", "cpu_cores"}
    assert set(data["versions"]) >= {"jax", "mujoco", "python"}
    (r,) = data["results"]
    assert r["task"] == "reacher" and r["physics"] == "jax"
    assert r["num_envs"] == 2 and r["steps"] == 8
    assert r["steps_per_s"] > 0 and r["compile_s"] > 0
    assert len(r["seconds"]) == 1


def load_bench(monkeypatch):
    import importlib.util

    monkeypatch.syspath_prepend(str(ROOT / "bench"))  # as running the script puts it first
    spec = importlib.util.spec_from_file_location("sim_throughput", ROOT / "bench" /
                                                  "sim_throughput.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # dataclasses look it up there
    spec.loader.exec_module(module)
    return module


def test_bench_env_counts_and_device_names(monkeypatch):
    bench = load_bench(monkeypatch)
    default = bench.Config()
    assert max(bench.env_counts("ant", default, on_cpu=True)) <= bench.CPU_CONTACT_RICH_MAX
    assert max(bench.env_counts("humanoid", default, on_cpu=True)) <= bench.CPU_CONTACT_RICH_MAX
    assert bench.env_counts("reacher", default, on_cpu=True) == bench.CPU_ENVS
    assert bench.env_counts("ant", default, on_cpu=False) == bench.GPU_ENVS
    assert bench.env_counts("ant", bench.Config(num_envs=(3,)), on_cpu=True) == (3,)
    assert bench.device_slug({"platform": "cpu", "kind": "cpu"}) == "cpu"
    assert bench.device_slug({"platform": "gpu", "kind": "NVIDIA H100 80GB HBM3"}) == (
        "nvidia-h100-80gb-hbm3")


def test_bench_rejects_unknown_task(tmp_path: Path):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "sim_throughput.py"), "--tasks", "walker",
         "--out", str(tmp_path / "x.json")],
        capture_output=True, text=True, timeout=120, check=False, cwd=ROOT,
    )
    assert proc.returncode == 2
    assert "walker" in proc.stderr and "reacher" in proc.stderr
    assert not (tmp_path / "x.json").exists()
