"""Offscreen rendering of goal-reaching rollouts: an mp4 video and a PNG contact sheet.

The rollout runs on MJX like training does (one env, jitted, `lax.scan` over an episode); only
qpos/qvel come back to the host, where plain MuJoCo recomputes the kinematics on the env's
nominal model and `mujoco.Renderer` draws them. The goal is not part of any robot model, so it
is drawn as a translucent marker added to the scene per frame.

MuJoCo chooses its OpenGL backend once, when it is imported, from `MUJOCO_GL`. Where the user
has not set it, this module picks one that can render without a display: EGL (Mesa's llvmpipe on
a CPU machine, the driver's EGL on a GPU one), else OSMesa, found by trying each in a
subprocess (a broken GL driver can crash the process that tries it).
"""

from __future__ import annotations

import contextlib
import copy
import os
import subprocess
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crl.core.atomic import write_atomic

# A context and one real frame: creating a context alone can succeed where rendering fails.
_PROBE = (
    "import mujoco\n"
    "m = mujoco.MjModel.from_xml_string('<mujoco><worldbody><geom size=\"1\"/></worldbody>"
    "</mujoco>')\n"
    "r = mujoco.Renderer(m, 16, 16)\n"
    "d = mujoco.MjData(m)\n"
    "mujoco.mj_forward(m, d)\n"
    "r.update_scene(d)\n"
    "assert r.render().shape == (16, 16, 3)\n"
)
HEADLESS_BACKENDS = ("egl", "osmesa")


@contextlib.contextmanager
def _exec_children() -> Iterator[None]:
    """Silence JAX's warning about forking a multithreaded process: the GL probe and ffmpeg
    are children that exec at once, which is safe."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", r"os\.fork\(\) was called", RuntimeWarning)
        yield


def _backend_works(backend: str) -> bool:
    env = {**os.environ, "MUJOCO_GL": backend, "PYOPENGL_PLATFORM": backend}
    try:
        with _exec_children():
            probe = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True,
                                   timeout=120, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return probe.returncode == 0


def select_gl_backend() -> str:
    """Set `MUJOCO_GL` to a headless backend that works, unless the user chose one.

    Returns the backend in use. Child processes inherit the choice, so the probe runs once.
    If `mujoco` was imported before this ran, its renderer is pointed at the chosen backend
    (it would otherwise use GLFW, which needs a display).
    """
    chosen = os.environ.get("MUJOCO_GL", "").strip().lower()
    if chosen or not sys.platform.startswith("linux"):
        return chosen or "default"
    backend = next((b for b in HEADLESS_BACKENDS if _backend_works(b)), HEADLESS_BACKENDS[0])
    os.environ["MUJOCO_GL"] = backend
    if "mujoco" in sys.modules:
        import importlib

        from mujoco.rendering.classic import gl_context

        gl_context.GLContext = importlib.import_module(f"mujoco.{backend}").GLContext
    return backend


GL_BACKEND = select_gl_backend()

# The GL backend must be chosen before mujoco is imported (see above).
import imageio.v2 as imageio  # noqa: E402
import imageio_ffmpeg  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import mujoco  # noqa: E402
import numpy as np  # noqa: E402

Policy = Callable[[jax.Array, jax.Array], jax.Array]

GOAL_RGBA = np.array([0.15, 0.85, 0.3, 0.45], dtype=np.float32)
ARROW_RGBA = np.array([0.15, 0.85, 0.3, 0.9], dtype=np.float32)
ARROW_RADII = 3.0  # the arrow to the goal is this many success radii long
VIDEO_FPS_MAX = 30.0  # render every k-th control step so videos stay near real time and small
SHEET_FRAMES = 5  # frames per episode (one row) on the contact sheet
SHEET_GAP = 4  # pixels between tiles
SOFTWARE_SHADOW_SIZE = 1024  # shadow map edge on a software rasterizer (MuJoCo's default: 4096)


class RenderError(ValueError):
    """Rendering cannot proceed; the message says what to change."""


@dataclass(frozen=True)
class Trajectory:
    """One episode on the host: state t = 0..T (reset state first) and per-step goal metrics."""

    qpos: np.ndarray  # [T+1, nq]
    qvel: np.ndarray  # [T+1, nv]
    mocap_pos: np.ndarray  # [T+1, nmocap, 3]
    mocap_quat: np.ndarray  # [T+1, nmocap, 4]
    goal: np.ndarray  # [T+1, goal_dim]
    achieved_goal: np.ndarray  # [T+1, goal_dim]
    distance: np.ndarray  # [T+1] ‖achieved_goal − goal‖
    success: np.ndarray  # [T+1] bool


def rollout_fn(env: Any, policy: Policy | None) -> Callable[[jax.Array], dict[str, jax.Array]]:
    """A jitted function rng -> one episode's arrays, for a single (un-vmapped) env."""
    act_dim = env.spec.act_dim

    def act(state: Any, key: jax.Array) -> jax.Array:
        if policy is None:
            return jax.random.uniform(key, (act_dim,), minval=-1.0, maxval=1.0)
        return policy(state.obs, state.goal)

    def record(state: Any) -> dict[str, jax.Array]:
        d = state.data
        return {
            "qpos": d.qpos, "qvel": d.qvel, "mocap_pos": d.mocap_pos, "mocap_quat": d.mocap_quat,
            "goal": state.goal, "achieved_goal": state.achieved_goal, "success": state.success,
            "distance": jnp.linalg.norm(state.achieved_goal - state.goal),
        }

    def episode(rng: jax.Array) -> dict[str, jax.Array]:
        reset_key, act_key = jax.random.split(rng)
        state = env.reset(reset_key)

        def step(s: Any, key: jax.Array) -> tuple[Any, dict[str, jax.Array]]:
            s = env.step(s, act(s, key))
            return s, record(s)

        keys = jax.random.split(act_key, env.episode_length)
        _, traj = jax.lax.scan(step, state, keys)
        first = record(state)
        return {k: jnp.concatenate([first[k][None], traj[k]]) for k in first}

    from crl.sim.env import jit  # after the GL backend is chosen: it imports mujoco

    return jit(episode)


def rollout(env: Any, policy: Policy | None, episodes: int, seed: int) -> list[Trajectory]:
    """Roll out `episodes` episodes (one compile, then one call each) and bring them to host."""
    if episodes < 1:
        raise RenderError(f"episodes: must be at least 1, got {episodes}")
    run = rollout_fn(env, policy)
    keys = jax.random.split(jax.random.PRNGKey(seed), episodes)
    return [Trajectory(**jax.device_get(run(k))) for k in keys]


def episode_metrics(traj: Trajectory) -> dict[str, Any]:
    """As `crl.train.evaluate` counts them: success (within the radius at any step),
    time_at_goal (steps within it, the paper's metric), final_distance (after the last step)."""
    at_goal = traj.success[1:]  # steps taken, not the reset state
    return {
        "success": bool(at_goal.any()),
        "time_at_goal": int(at_goal.sum()),
        "final_distance": float(traj.distance[-1]),
    }


def summarize(per_episode: Sequence[dict[str, Any]], episode_length: int) -> dict[str, Any]:
    """Means and medians over episodes, with the same keys as `crl.train.evaluate.summarize`."""
    time_at_goal = np.array([m["time_at_goal"] for m in per_episode], dtype=np.float64)
    final = np.array([m["final_distance"] for m in per_episode], dtype=np.float64)
    return {
        "episodes": len(per_episode),
        "success_rate": float(np.mean([m["success"] for m in per_episode])),
        "time_at_goal": float(time_at_goal.mean()),
        "time_at_goal_fraction": float(time_at_goal.mean() / episode_length),
        "final_distance_median": float(np.median(final)),
        "final_distance_mean": float(final.mean()),
    }


# ------------------------------------------------------------------------------ drawing


def choose_camera(model: mujoco.MjModel, name: str | None = None) -> int | mujoco.MjvCamera:
    """The camera `name`, else the model's first camera (ours define `top`, `front` or `track`;
    a camera added to the worldbody comes first), else a free camera framing the whole model."""
    if name:
        cam = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, name)
        if cam < 0:
            names = [mujoco.mj_id2name(model, mujoco.mjtObj.mjOBJ_CAMERA, i) for i in
                     range(model.ncam)]
            raise RenderError(f"camera: {name!r} is not in the model (its cameras: "
                              f"{', '.join(n for n in names if n) or 'none'})")
        return cam
    if model.ncam > 0:
        return 0
    cam = mujoco.MjvCamera()
    mujoco.mjv_defaultFreeCamera(model, cam)
    return cam


def goal_point(goal: np.ndarray, axes: str) -> np.ndarray:
    """The goal as a world point: goals are world-frame coordinates on `axes` (e.g. "xy" for
    a base position, "xyz" for an end effector); a missing z puts the point on the ground."""
    point = np.zeros(3)
    for value, axis in zip(goal, axes, strict=True):
        point["xyz".index(axis)] = value
    return point


def add_goal_marker(scene: mujoco.MjvScene, pos: np.ndarray, radius: float, flat: bool) -> None:
    """A translucent sphere of the success radius (a disk on the ground for a planar goal)."""
    if scene.ngeom >= scene.maxgeom:
        return
    geom = scene.geoms[scene.ngeom]
    if flat:
        kind, size = mujoco.mjtGeom.mjGEOM_CYLINDER, np.array([radius, radius, 0.002])
        pos = pos + np.array([0.0, 0.0, 0.002])
    else:
        kind, size = mujoco.mjtGeom.mjGEOM_SPHERE, np.array([radius, radius, radius])
    mujoco.mjv_initGeom(geom, kind, size, pos, np.eye(3).ravel(), GOAL_RGBA)
    scene.ngeom += 1


def add_goal_arrow(scene: mujoco.MjvScene, start: np.ndarray, goal: np.ndarray, length: float,
                   width: float) -> None:
    """An arrow from the achieved goal toward the goal: goals can be out of the camera's view
    (the ant's are 10 m away), the direction to them is not."""
    offset = goal - start
    distance = float(np.linalg.norm(offset))
    if distance == 0.0 or scene.ngeom >= scene.maxgeom:
        return
    end = start + offset * min(1.0, length / distance)
    geom = scene.geoms[scene.ngeom]
    mujoco.mjv_initGeom(geom, mujoco.mjtGeom.mjGEOM_ARROW, np.zeros(3), np.zeros(3),
                        np.eye(3).ravel(), ARROW_RGBA)
    mujoco.mjv_connector(geom, mujoco.mjtGeom.mjGEOM_ARROW, width, start, end)
    scene.ngeom += 1


class FrameRenderer:
    """Draws host trajectories of one env's nominal model, goal marker included.

    On a software rasterizer (Mesa llvmpipe, as on a CPU-only machine) the shadow map dominates
    the cost of a frame: there it renders a copy of the model with a smaller shadow map, which
    keeps the shadows and is about four times faster.
    """

    def __init__(self, env: Any, width: int, height: int, camera: str | None = None):
        model = env.mj_model
        check_size(model, width, height)
        self.radius = env.spec.success_radius
        self.axes = env.config.goal_axes
        self.camera = choose_camera(model, camera)
        self.renderer = _renderer(model, width, height)
        if software_gl() and model.vis.quality.shadowsize > SOFTWARE_SHADOW_SIZE:
            self.renderer.close()
            model = copy.deepcopy(model)  # the env's own model stays as it was
            model.vis.quality.shadowsize = SOFTWARE_SHADOW_SIZE
            self.renderer = _renderer(model, width, height)
        self.model, self.data = model, mujoco.MjData(model)

    def frame(self, traj: Trajectory, t: int) -> np.ndarray:
        m, d = self.model, self.data
        d.qpos[:], d.qvel[:] = traj.qpos[t], traj.qvel[t]
        if m.nmocap:
            d.mocap_pos[:], d.mocap_quat[:] = traj.mocap_pos[t], traj.mocap_quat[t]
        mujoco.mj_forward(m, d)
        self.renderer.update_scene(d, camera=self.camera)
        scene, flat = self.renderer.scene, "z" not in self.axes
        goal = goal_point(traj.goal[t], self.axes)
        add_goal_marker(scene, goal, self.radius, flat)
        if traj.distance[t] > self.radius:
            lift = np.array([0.0, 0.0, self.radius / 4 if flat else 0.0])  # above the ground
            add_goal_arrow(scene, goal_point(traj.achieved_goal[t], self.axes) + lift,
                           goal + lift, ARROW_RADII * self.radius, self.radius / 5)
        frame: np.ndarray = self.renderer.render().copy()
        return frame

    def close(self) -> None:
        self.renderer.close()


def check_size(model: mujoco.MjModel, width: int, height: int) -> None:
    vis = model.vis.global_
    if not (16 <= width <= vis.offwidth and 16 <= height <= vis.offheight):
        raise RenderError(
            f"size: {width}x{height} is outside 16x16..{vis.offwidth}x{vis.offheight} "
            "(the model's offscreen buffer); choose a smaller --width/--height"
        )


def _renderer(model: mujoco.MjModel, width: int, height: int) -> mujoco.Renderer:
    try:
        return mujoco.Renderer(model, height, width)
    except Exception as e:  # GL errors come from several libraries with their own types
        raise RenderError(
            f"offscreen rendering failed with MUJOCO_GL={os.environ.get('MUJOCO_GL')!r} "
            f"({type(e).__name__}: {e}); install libegl1 and libegl-mesa0 (or libosmesa6 "
            "and set MUJOCO_GL=osmesa)"
        ) from None


def software_gl() -> bool:
    """Whether the current OpenGL context rasterizes on the CPU (call with a context current)."""
    try:
        from OpenGL import GL

        name = (GL.glGetString(GL.GL_RENDERER) or b"").lower()
    except Exception:  # no PyOpenGL or no context: assume a GPU, change nothing
        return False
    return any(s in name for s in (b"llvmpipe", b"softpipe", b"swrast", b"osmesa"))


def contact_sheet(rows: Sequence[Sequence[np.ndarray]], gap: int = SHEET_GAP) -> np.ndarray:
    """Tile equally sized frames: one row per episode, white gaps between tiles."""
    h, w, c = rows[0][0].shape
    cols = max(len(r) for r in rows)
    sheet = np.full((len(rows) * (h + gap) - gap, cols * (w + gap) - gap, c), 255, np.uint8)
    for i, row in enumerate(rows):
        for j, img in enumerate(row):
            y, x = i * (h + gap), j * (w + gap)
            sheet[y:y + h, x:x + w] = img
    return sheet


def _check_suffix(path: Path, suffix: str, what: str) -> None:
    if path.suffix.lower() != suffix:
        raise RenderError(f"{what}: {str(path)!r} must end in {suffix}")


def write_video(path: Path, frames: Sequence[np.ndarray], fps: float) -> None:
    """H.264 mp4 via imageio-ffmpeg, written to a temp file and renamed into place."""
    _check_suffix(path, ".mp4", "video")

    def write(p: Path) -> None:
        h, w = frames[0].shape[:2]
        with _exec_children():
            # Even sizes suffice for yuv420p: no rescaling to multiples of 16.
            out = imageio_ffmpeg.write_frames(str(p), (w, h), fps=fps, codec="libx264",
                                              macro_block_size=2, ffmpeg_log_level="error")
            out.send(None)  # start ffmpeg
            for f in frames:
                out.send(np.ascontiguousarray(f))
            out.close()

    write_atomic(path, write)


def write_png(path: Path, image: np.ndarray) -> None:
    _check_suffix(path, ".png", "frames")
    write_atomic(path, lambda p: imageio.imwrite(p, image))


def render_rollout(
    env: Any,
    policy: Policy | None,
    episodes: int,
    seed: int,
    video: Path | None = None,
    frames: Path | None = None,
    width: int = 320,
    height: int = 240,
    camera: str | None = None,
) -> dict[str, Any]:
    """Roll out `episodes` episodes of `env` with `policy(obs, goal) -> action in [-1, 1]`
    (None: uniform random actions), write an mp4 and/or a PNG contact sheet (one row of frames
    per episode), and return the metrics: {"task", "episodes": [per-episode], "summary"}.
    `camera` names a model camera (default: the model's first, see `choose_camera`).
    """
    width, height = width - width % 2, height - height % 2  # H.264 wants even sizes
    # Check what can be checked before the rollout, not after it.
    for path, suffix, what in ((video, ".mp4", "video"), (frames, ".png", "frames")):
        if path is not None:
            _check_suffix(Path(path), suffix, what)
    if video is not None or frames is not None:
        check_size(env.mj_model, width, height)
        choose_camera(env.mj_model, camera)
    trajs = rollout(env, policy, episodes, seed)
    per_episode = [episode_metrics(t) for t in trajs]
    result = {"task": env.spec.task, "episodes": per_episode,
              "summary": summarize(per_episode, env.episode_length)}
    if video is None and frames is None:
        return result

    steps = env.episode_length
    stride = max(1, round(env.spec.control_hz / VIDEO_FPS_MAX))
    video_ts = list(range(0, steps + 1, stride))
    sheet_ts = np.linspace(0, steps, SHEET_FRAMES).round().astype(int).tolist()
    drawer = FrameRenderer(env, width, height, camera)
    try:
        clip: list[np.ndarray] = []
        rows: list[list[np.ndarray]] = []
        for traj in trajs:
            wanted = sorted(set(video_ts if video else []) | set(sheet_ts if frames else []))
            imgs = {t: drawer.frame(traj, t) for t in wanted}
            if video is not None:
                clip.extend(imgs[t] for t in video_ts)
            if frames is not None:
                rows.append([imgs[t] for t in sheet_ts])
    finally:
        drawer.close()
    if video is not None:
        write_video(Path(video), clip, fps=env.spec.control_hz / stride)
    if frames is not None:
        write_png(Path(frames), contact_sheet(rows))
    return result
