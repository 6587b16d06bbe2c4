"""Offscreen rendering of goal-reaching rollouts: an mp4 video and a PNG contact sheet.

The rollout runs on MJX like training does (one env, jitted, `lax.scan` over an episode); only
qpos/qvel come back to the host, where plain MuJoCo recomputes the kinematics on the env's
nominal model and `mujoco.Renderer` draws them. The goal is not part of any robot model, so it
is drawn as a translucent marker added to the scene per frame. The contact sheet is labelled
for a reader (`labelled_sheet`): a legend, each column's step, each episode's success, and a
ring around the point that reaches for the goal (the reacher's fingertip) in every frame.

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
from crl.core.usage import CM_PER_M

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
# The contact sheet's labels (`labelled_sheet`), in pixels: a header of two lines of text (the
# legend, then each column's step) above the tiles, and a column of each row's episode, its
# success mark and figures left of them.
SHEET_FONT_PX = 13
SHEET_LINE = 18
SHEET_HEADER = 2 * SHEET_LINE + 6
SHEET_LABEL_WIDTH = 140
ACHIEVED_RGB = (255, 140, 0)  # the ring around the point that reaches for the goal
REACHED_RGB, MISSED_RGB = (30, 150, 60), (200, 40, 40)
# What the goal and the arrow look like on the reacher's grey arena (the translucent marker
# over it), for the legend.
GOAL_SWATCH_RGB = (110, 190, 128)
ARROW_SWATCH_RGB = tuple(round(255 * c) for c in ARROW_RGBA[:3])


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
        self.reacher = (env.config.goal_kind, env.config.goal_name)  # what reaches for the goal
        self.size = (width, height)
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

    def achieved_pixel(self) -> tuple[float, float] | None:
        """Where the last frame drawn shows the point that reaches for the goal (the reacher's
        fingertip, the ant's torso): (x, y) in pixels, None when it is behind the camera."""
        kind, name = self.reacher
        point = (self.data.site(name) if kind == "site" else self.data.body(name)).xpos
        scene = self.renderer.scene
        camera = mujoco.mjv_averageCamera(scene.camera[0], scene.camera[1])  # as drawn (mono)
        return project(camera, point, *self.size)

    def close(self) -> None:
        self.renderer.close()


def project(camera: mujoco.MjvGLCamera, point: np.ndarray, width: int,
            height: int) -> tuple[float, float] | None:
    """Where a renderer's camera draws a world `point` in a width x height frame: (x, y) in
    pixels from the top left, None behind the camera. As MuJoCo's renderer sets up the view:
    the frustum's half width follows the frame's aspect ratio."""
    forward, up = np.asarray(camera.forward, float), np.asarray(camera.up, float)
    offset = np.asarray(point, float) - np.asarray(camera.pos, float)
    x, y, depth = offset @ np.cross(forward, up), offset @ up, offset @ forward
    if not camera.orthographic:
        if depth <= 0:
            return None
        x, y = camera.frustum_near * x / depth, camera.frustum_near * y / depth
    bottom, top = camera.frustum_bottom, camera.frustum_top
    half_width = (top - bottom) / 2 * width / height
    u = (x - camera.frustum_center + half_width) / (2 * half_width)
    v = (y - bottom) / (top - bottom)
    return float(u * width), float((1 - v) * height)


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


@dataclass(frozen=True)
class RowLabel:
    """What the contact sheet says of one episode (one row), left of its frames."""

    title: str  # "episode 1"
    reached: bool  # within the success radius at some step: the mark
    lines: tuple[str, ...]  # figures under the mark


def labelled_sheet(
    rows: Sequence[Sequence[np.ndarray]], rings: Sequence[Sequence[tuple[float, float] | None]],
    columns: Sequence[str], labels: Sequence[RowLabel], legend: Sequence[tuple[str, str]],
    gap: int = SHEET_GAP,
) -> np.ndarray:
    """The contact sheet for a reader: `contact_sheet`'s tiles at the bottom right, a ring around
    each frame's `rings` pixel (the point that reaches for the goal), the legend (`(kind, text)`,
    kind "goal", "achieved" or "arrow") and each column's label in a header of SHEET_HEADER
    pixels above, and each row's label (a mark: a green tick when the episode reached the goal,
    a red cross when not) in a column SHEET_LABEL_WIDTH wide on the left."""
    from PIL import Image, ImageDraw

    h, w, _ = rows[0][0].shape
    tiles = contact_sheet([[_ring(img, at) for img, at in zip(row, marks, strict=True)]
                           for row, marks in zip(rows, rings, strict=True)], gap)
    sheet = Image.new("RGB", (SHEET_LABEL_WIDTH + tiles.shape[1], SHEET_HEADER + tiles.shape[0]),
                      "white")
    sheet.paste(Image.fromarray(tiles), (SHEET_LABEL_WIDTH, SHEET_HEADER))
    draw, font = ImageDraw.Draw(sheet), _font()
    x, y, mid = 6, 3, 3 + SHEET_LINE // 2
    for kind, text in legend:
        _legend_swatch(draw, kind, x + 8, mid)
        draw.text((x + 20, y), text, fill="black", font=font)
        x += 20 + round(draw.textlength(text, font=font)) + 18
    for j, text in enumerate(columns):
        centre = SHEET_LABEL_WIDTH + j * (w + gap) + w / 2
        draw.text((centre, y + SHEET_LINE), text, fill="black", font=font, anchor="ma")
    for i, label in enumerate(labels):
        top = SHEET_HEADER + i * (h + gap)
        colour = REACHED_RGB if label.reached else MISSED_RGB
        texts: list[tuple[str, str | tuple[int, int, int]]] = [
            (label.title, "black"), ("reached" if label.reached else "not reached", colour),
            *((line, "black") for line in label.lines)]
        for k, (text, fill) in enumerate(texts):
            line_top = top + 2 + k * SHEET_LINE
            if line_top + SHEET_LINE > top + h:  # what does not fit a short row is left out
                break
            indent = 6
            if k == 1:
                _mark(draw, label.reached, indent + 7, line_top + SHEET_LINE // 2)
                indent += 20
            draw.text((indent, line_top), text, fill=fill, font=font)
    return np.asarray(sheet)


def _font() -> Any:
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=SHEET_FONT_PX)  # Pillow >= 10.1 with FreeType
    except (TypeError, ImportError):
        return ImageFont.load_default()


def _ring(image: np.ndarray, at: tuple[float, float] | None) -> np.ndarray:
    """The frame with a ring around pixel `at` (none when None)."""
    if at is None:
        return image
    from PIL import Image, ImageDraw

    out = Image.fromarray(image)
    r = max(4.0, image.shape[0] / 24)
    ImageDraw.Draw(out).ellipse((at[0] - r, at[1] - r, at[0] + r, at[1] + r),
                                outline=ACHIEVED_RGB, width=2)
    return np.asarray(out)


def _legend_swatch(draw: Any, kind: str, x: float, y: float) -> None:
    if kind == "goal":
        draw.ellipse((x - 7, y - 7, x + 7, y + 7), fill=GOAL_SWATCH_RGB)
    elif kind == "achieved":
        draw.ellipse((x - 6, y - 6, x + 6, y + 6), outline=ACHIEVED_RGB, width=2)
    else:  # the arrow toward the goal
        draw.line((x - 8, y, x + 6, y), fill=ARROW_SWATCH_RGB, width=3)
        draw.polygon(((x + 8, y), (x + 2, y - 5), (x + 2, y + 5)), fill=ARROW_SWATCH_RGB)


def _mark(draw: Any, reached: bool, x: float, y: float) -> None:
    """A green disk with a tick, or a red one with a cross."""
    draw.ellipse((x - 7, y - 7, x + 7, y + 7), fill=REACHED_RGB if reached else MISSED_RGB)
    if reached:
        draw.line(((x - 4, y), (x - 1, y + 3), (x + 4, y - 3)), fill="white", width=2)
    else:
        draw.line((x - 3, y - 3, x + 3, y + 3), fill="white", width=2)
        draw.line((x - 3, y + 3, x + 3, y - 3), fill="white", width=2)


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
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Roll out `episodes` episodes of `env` with `policy(obs, goal) -> action in [-1, 1]`
    (None: uniform random actions), write an mp4 and/or a PNG contact sheet (one row of frames
    per episode, labelled: `labelled_sheet`), and return the metrics: {"task", "episodes":
    [per-episode], "summary"}. `camera` names a model camera (default: the model's first, see
    `choose_camera`); `progress` is told each phase as it begins.
    """
    phase = progress or (lambda description: None)
    width, height = width - width % 2, height - height % 2  # H.264 wants even sizes
    # Check what can be checked before the rollout, not after it.
    for path, suffix, what in ((video, ".mp4", "video"), (frames, ".png", "frames")):
        if path is not None:
            _check_suffix(Path(path), suffix, what)
    if video is not None or frames is not None:
        check_size(env.mj_model, width, height)
        choose_camera(env.mj_model, camera)
    phase(f"rolling out {episodes} episode{'s' * (episodes != 1)} to render (compiling)")
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
        rings: list[list[tuple[float, float] | None]] = []
        for i, traj in enumerate(trajs):
            phase(f"rendering episode {i + 1}/{len(trajs)}")
            wanted = sorted(set(video_ts if video else []) | set(sheet_ts if frames else []))
            imgs, at = {}, {}
            for t in wanted:
                imgs[t] = drawer.frame(traj, t)
                at[t] = drawer.achieved_pixel()
            if video is not None:
                clip.extend(imgs[t] for t in video_ts)
            if frames is not None:
                rows.append([imgs[t] for t in sheet_ts])
                rings.append([at[t] for t in sheet_ts])
    finally:
        drawer.close()
    if video is not None:
        phase(f"writing {video}")
        write_video(Path(video), clip, fps=env.spec.control_hz / stride)
    if frames is not None:
        phase(f"writing {frames}")
        labels = [episode_label(i, m, steps) for i, m in enumerate(per_episode)]
        write_png(Path(frames), labelled_sheet(rows, rings, step_labels(sheet_ts, env, width),
                                               labels, sheet_legend(env)))
    return result


def sheet_legend(env: Any) -> list[tuple[str, str]]:
    """The contact sheet's legend: the goal marker, the point that reaches for it, the arrow."""
    name = {"ee": "end effector"}.get(env.config.goal_name, env.config.goal_name)
    return [("goal", f"goal ({_length(env.spec.success_radius)} success radius)"),
            ("achieved", name.replace("_", " ")),
            ("arrow", "toward the goal, while outside the radius")]


def step_labels(steps: Sequence[int], env: Any, width: int) -> list[str]:
    """Each column's step, with its time when that fits over a frame `width` pixels wide."""
    timed = [f"step {t} · {t / env.spec.control_hz:.1f} s" for t in steps]
    # about 7 px a character at SHEET_FONT_PX
    return timed if max(len(s) for s in timed) * 7 <= width else [f"step {t}" for t in steps]


def episode_label(index: int, metrics: dict[str, Any], steps: int) -> RowLabel:
    """Episode `index`'s row label from its `episode_metrics`."""
    return RowLabel(f"episode {index + 1}", metrics["success"],
                    (f"ended {_length(metrics['final_distance'])} away",
                     f"at goal {metrics['time_at_goal']}/{steps} steps"))


def _length(metres: float) -> str:
    return f"{metres * CM_PER_M:.1f} cm" if metres < 1 else f"{metres:.2f} m"
