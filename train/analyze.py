"""What a run's critic learned: a value heatmap over positions and the φ embeddings of an episode.

`crl-train analyze --run DIR` writes three files (default folder `<run>/analysis/`):

* `value_heatmap.png`: the critic's value of the deterministic policy, for one fixed goal g, at
  states placed on a grid of positions of the robot's achieved goal,
      V(s, g) = f(s, π(s, g), g) = −‖φ(s, π(s, g)) − ψ(g)‖₂,
  π(s, g) = tanh of the actor's mean (the action evaluation and deployment take) and f the very
  energy the InfoNCE loss is trained on (`crl.train.losses.energy`: the diagonal, the positives,
  of `contrastive_logits`), so the plot shows what was trained. Maze walls are drawn from the
  task's `MazeLayout` and grid points inside them are left out (NaN).
* `embeddings.png`: φ(s_t, a_t) along one deterministic evaluation episode, projected to 2-D by
  PCA (numpy SVD), coloured by time, with ψ(g) projected by the same PCA and marked; beside it
  the energy f(s_t, a_t, g) and the distance to the goal along the episode.
* `analysis.json`: task, step, goal, the grid's extent, the value range, its argmax and that
  point's distance to the goal, the value at the usable grid point nearest the goal
  (`value_at_goal`), how far the placed states' achieved goals are from their grid points
  (`placement_error_max`), the projection's explained variance.

How a grid point becomes a state: a task with a free-floating base (the ant, the humanoid, their
mazes) gets its reset's default pose (the start keyframe or qpos0, no joint noise, zero
velocity) with the base's xy moved onto the point; a planar two-joint arm (the reacher) gets the
joint angles that put its fingertip on the point by the arm's closed-form inverse kinematics (link
vectors read from the model; the elbow-positive solution, the other one where that leaves the
joint range), checked by MuJoCo's forward kinematics; points out of reach are NaN. Either state
goes through the env's own `reset` (its start and goal hooks replaced), so the observation is
built exactly as in training. Tasks of neither kind (the 7-DoF arm) get no heatmap (said in the
JSON); the embedding plot works for every task.

Everything runs without domain randomization (`dr="off"`: the nominal model, no observation
noise), so a plot is a function of the parameters alone. For comparisons across depths, the
same goal (`--goal`, or the goal `reset` draws from `--seed`), grid, colour maps and PCA sign
convention (ψ(g) on the positive side of both components) are used in every run; the heatmap's
colours span each plot's own value range and its colour bar is labelled in raw energies.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import mujoco
import numpy as np

from crl.core.atomic import write_atomic, write_json
from crl.core.usage import ConfigError
from crl.sim.env import jit as env_jit
from crl.train.config import NetworkConfig
from crl.train.losses import energy
from crl.train.networks import Actor, Encoder, deterministic_action, network_config

HEATMAP_FILE = "value_heatmap.png"
EMBEDDINGS_FILE = "embeddings.png"
JSON_FILE = "analysis.json"
ANALYSIS_DIR = "analysis"
ENERGY = "V(s, g) = -||phi(s, pi(s, g)) - psi(g)||_2 (crl.train.losses.energy)"
VALUE_CMAP = "viridis"
TIME_CMAP = "plasma"
FK_TOLERANCE = 1e-5  # m: an IK solution whose fingertip misses its grid point by more is dropped

# (obs [N, obs_dim], goal [N, goal_dim]) → φ(s, π(s, g)) [N, D]; goal [N, goal_dim] → ψ(g) [N, D].
PhiPi = Callable[[np.ndarray, np.ndarray], np.ndarray]
Psi = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Grid:
    """Grid points in the plane of the achieved goal's first two axes: the pixel centres of a
    `size` × `size` image covering the box `low`..`high`. Point (iy, ix) is (xs[ix], ys[iy]),
    row-major as `imshow(origin="lower")` draws it. Centres, not edges: a maze's cell
    boundaries (multiples of half a cell) fall between points, not on them."""

    low: tuple[float, float]
    high: tuple[float, float]
    size: int

    @property
    def xs(self) -> np.ndarray:
        return self._axis(0)

    @property
    def ys(self) -> np.ndarray:
        return self._axis(1)

    def _axis(self, k: int) -> np.ndarray:
        step = (self.high[k] - self.low[k]) / self.size
        return self.low[k] + (np.arange(self.size) + 0.5) * step

    @property
    def points(self) -> np.ndarray:
        """[ny, nx, 2] world (x, y) of every point."""
        x, y = np.meshgrid(self.xs, self.ys)
        return np.stack([x, y], axis=-1)

    @property
    def extent(self) -> tuple[float, float, float, float]:
        """(x0, x1, y0, y1): the box the image covers."""
        return self.low[0], self.high[0], self.low[1], self.high[1]


def make_grid(low: Any, high: Any, size: int) -> Grid:
    if size < 2:
        raise ConfigError(f"grid: need at least 2 points per axis, got {size}")
    lo, hi = (float(low[0]), float(low[1])), (float(high[0]), float(high[1]))
    if not (lo[0] < hi[0] and lo[1] < hi[1]):
        raise ConfigError(f"grid: empty box from {lo} to {hi}")
    return Grid(lo, hi, size)


# ------------------------------------------------------------------------------- pure core


def value_grid(
    phi_pi: PhiPi, psi: Psi, obs: np.ndarray, valid: np.ndarray, goal: np.ndarray
) -> np.ndarray:
    """V(s, g) = −‖φ(s, π(s, g)) − ψ(g)‖₂ at every valid grid state, NaN elsewhere.

    `obs` [..., obs_dim] holds one state's observation per grid point (anything where `valid`
    [...] is False), `goal` [goal_dim] the fixed goal. Pure: φ and ψ are whatever callables are
    given, so a test can inject ones whose answer is known.
    """
    values = np.full(valid.shape, np.nan)
    if not valid.any():
        return values
    states = np.asarray(obs)[valid]
    goals = np.broadcast_to(np.asarray(goal, np.float32), (len(states), len(goal)))
    sa, g = np.asarray(phi_pi(states, goals)), np.asarray(psi(goals))
    values[valid] = np.asarray(energy(jnp.asarray(sa), jnp.asarray(g)), np.float64)
    return values


def argmax_point(grid: Grid, values: np.ndarray) -> tuple[float, float]:
    """World (x, y) of the grid point with the largest value (NaNs ignored)."""
    iy, ix = np.unravel_index(int(np.nanargmax(values)), values.shape)
    return float(grid.xs[ix]), float(grid.ys[iy])


@dataclass(frozen=True)
class Projection:
    """A 2-D PCA of φ vectors: `mean` [D], `components` [2, D] (rows), explained variance
    ratios [2]. Signs are fixed so ψ(g) − mean projects to ≥ 0 on both components."""

    mean: np.ndarray
    components: np.ndarray
    explained_variance: np.ndarray

    def __call__(self, x: np.ndarray) -> np.ndarray:
        projected: np.ndarray = (np.asarray(x, np.float64) - self.mean) @ self.components.T
        return projected


def pca_2d(points: np.ndarray, anchor: np.ndarray) -> Projection:
    """PCA of `points` [T, D] to 2-D (numpy SVD, no sklearn); `anchor` (ψ(g)) fixes the signs,
    which PCA leaves free, so runs of different depths are drawn in the same orientation."""
    x = np.asarray(points, np.float64)
    mean = x.mean(axis=0)
    _, s, vt = np.linalg.svd(x - mean, full_matrices=False)
    components = np.zeros((2, x.shape[1]))
    k = min(2, vt.shape[0])
    components[:k] = vt[:k]
    variance = np.square(s)
    total = float(variance.sum())
    ratio = np.zeros(2)
    ratio[:k] = variance[:k] / total if total > 0 else 0.0
    side = np.sign((np.asarray(anchor, np.float64) - mean) @ components.T)
    components *= np.where(side < 0, -1.0, 1.0)[:, None]
    return Projection(mean, components, ratio)


# ------------------------------------------------------------------------- states on the grid


@dataclass(frozen=True)
class GridStates:
    """How a task's grid points become states: `qpos` [ny, nx, nq] (rows where `valid` is
    False hold anything), which points are usable, and the walls to draw."""

    grid: Grid
    qpos: np.ndarray
    valid: np.ndarray
    method: str
    walls: tuple[tuple[float, float, float, float], ...] = ()  # (x0, y0, width, height)
    reach: tuple[float, float, float, float] | None = None  # planar arm: (cx, cy, r_min, r_max)


def home_qpos(env: Any) -> np.ndarray:
    """The pose reset starts from before its noise: the start keyframe, else qpos0."""
    m = env.mj_model
    d = mujoco.MjData(m)
    keyframe = env.config.start.keyframe
    if keyframe:
        mujoco.mj_resetDataKeyframe(m, d, mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_KEY, keyframe))
    return np.array(d.qpos, np.float64)


def base_qpos_address(env: Any) -> int:
    """qpos index of the base's free joint (its x; y follows)."""
    m = env.mj_model
    body = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_BODY, env.config.base_body)
    for j in range(m.body_jntadr[body], m.body_jntadr[body] + m.body_jntnum[body]):
        if m.jnt_type[j] == mujoco.mjtJoint.mjJNT_FREE:
            return int(m.jnt_qposadr[j])
    raise ConfigError(f"analyze: base body {env.config.base_body!r} has no free joint")


def base_grid_states(env: Any, size: int, goal: np.ndarray) -> GridStates:
    """A free-floating robot: its default pose with the base's xy on each grid point. A maze's
    grid spans its free cells (± half a cell) and skips points inside wall cells; open floor's
    spans the goal distribution's bounds (and the goal)."""
    layout = getattr(env, "layout", None)
    walls: tuple[tuple[float, float, float, float], ...] = ()
    if layout is not None:
        cells = np.array(layout.free_cells(), np.float64) * layout.cell_size
        half = layout.cell_size / 2
        low, high = cells.min(axis=0) - half, cells.max(axis=0) + half
        walls = tuple(
            (x - half, y - half, layout.cell_size, layout.cell_size)
            for x, y in (layout.cell_center(i, j) for i, j in layout.wall_cells())
        )
    else:
        lo, hi = env.config.goal_sampler.bounds()
        low, high = np.array(lo[:2]), np.array(hi[:2])
    low, high = np.minimum(low, goal[:2]), np.maximum(high, goal[:2])
    grid = make_grid(low, high, size)
    points = grid.points
    valid = np.ones(points.shape[:2], bool)
    if layout is not None:
        wall_cells = set(layout.wall_cells())
        rows, cols = layout.shape
        for index in np.ndindex(valid.shape):
            i, j = layout.cell_of(*points[index])
            valid[index] = 0 <= i < rows and 0 <= j < cols and (i, j) not in wall_cells
    qpos = np.broadcast_to(home_qpos(env), (*valid.shape, env.mj_model.nq)).copy()
    adr = base_qpos_address(env)
    qpos[..., adr : adr + 2] = points
    method = "base placed on each point (default pose)" + (", walls skipped" if walls else "")
    return GridStates(grid, qpos, valid, method, walls=walls)


def is_planar_arm(env: Any) -> bool:
    """Two hinge joints about z, no floating base, an xy goal: the reacher's kind of arm."""
    m = env.mj_model
    if env.config.base_body or env.config.goal_axes != "xy" or m.njnt != 2:
        return False
    hinge = all(m.jnt_type[j] == mujoco.mjtJoint.mjJNT_HINGE for j in range(2))
    return hinge and bool(np.allclose(np.abs(m.jnt_axis[:, 2]), 1.0))


def planar_arm_grid_states(env: Any, size: int, goal: np.ndarray) -> GridStates:
    """Joint angles putting the goal point (site or body) on each grid point, by closed-form
    two-link inverse kinematics, verified with MuJoCo's forward kinematics."""
    m, d = env.mj_model, mujoco.MjData(env.mj_model)
    qpos0 = home_qpos(env)
    qadr = m.jnt_qposadr[:2]
    site = env.config.goal_kind == "site"
    obj = mujoco.mjtObj.mjOBJ_SITE if site else mujoco.mjtObj.mjOBJ_BODY
    target = mujoco.mj_name2id(m, obj, env.config.goal_name)

    def tip(q: np.ndarray) -> np.ndarray:
        d.qpos[:] = qpos0
        d.qpos[qadr] = q
        mujoco.mj_kinematics(m, d)
        return np.array((d.site_xpos if site else d.xpos)[target, :2])

    tip0 = tip(np.zeros(2))
    shoulder, elbow = np.array(d.xanchor[0, :2]), np.array(d.xanchor[1, :2])
    a, b = elbow - shoulder, tip0 - elbow  # the links at zero angles
    sign = np.sign(m.jnt_axis[:, 2])  # a hinge about −z turns clockwise
    la, lb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    offset = math.atan2(b[1], b[0]) - math.atan2(a[1], a[0])
    r_min, r_max = abs(la - lb), la + lb
    grid = make_grid(np.minimum(shoulder - r_max, goal[:2]),
                     np.maximum(shoulder + r_max, goal[:2]), size)
    points = grid.points
    qpos = np.broadcast_to(qpos0, (*points.shape[:2], m.nq)).copy()
    valid = np.zeros(points.shape[:2], bool)
    low = np.where(m.jnt_limited[:2], m.jnt_range[:2, 0], -np.inf)
    high = np.where(m.jnt_limited[:2], m.jnt_range[:2, 1], np.inf)
    for index in np.ndindex(valid.shape):
        delta = points[index] - shoulder
        c = (delta @ delta - la**2 - lb**2) / (2 * la * lb)
        if abs(c) > 1:
            continue
        for elbow_angle in (math.acos(c) - offset, -math.acos(c) - offset):
            rotated = _rotate(b, elbow_angle)
            shoulder_angle = math.atan2(delta[1], delta[0]) - math.atan2(*(a + rotated)[::-1])
            q = _wrap(np.array([shoulder_angle, elbow_angle])) * sign
            if np.all(q >= low) and np.all(q <= high) and (
                np.linalg.norm(tip(q) - points[index]) <= FK_TOLERANCE
            ):
                qpos[index][qadr] = q
                valid[index] = True
                break
    return GridStates(
        grid, qpos, valid, "planar two-link inverse kinematics (elbow-positive first)",
        reach=(float(shoulder[0]), float(shoulder[1]), r_min, r_max),
    )


def _rotate(v: np.ndarray, angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([c * v[0] - s * v[1], s * v[0] + c * v[1]])


def _wrap(angle: np.ndarray) -> np.ndarray:
    return (angle + np.pi) % (2 * np.pi) - np.pi


def grid_states(env: Any, size: int, goal: np.ndarray) -> GridStates | None:
    """The task's grid of states, or None where neither construction applies."""
    if env.config.base_body and env.config.goal_axes.startswith("xy"):
        return base_grid_states(env, size, goal)
    if is_planar_arm(env):
        return planar_arm_grid_states(env, size, goal)
    return None


def states_at(env: Any, qpos: np.ndarray, goal: np.ndarray, key: jax.Array) -> Any:
    """The env's reset state for each pose in `qpos` [N, nq] (zero velocity) and `goal`:
    `reset` itself, its `sample_start` / `sample_goal` hooks replaced on a shallow copy, so the
    control hold, action queue, kinematics and observation are built as in training."""
    nv = env.mj_model.nv
    fixed_goal = jnp.asarray(goal, jnp.float32)

    def one(q: jax.Array) -> Any:
        posed = copy.copy(env)
        posed.sample_start = lambda rng: (q, jnp.zeros(nv))
        posed.sample_goal = lambda rng: fixed_goal
        return posed.reset(key)

    return env_jit(jax.vmap(one))(jnp.asarray(qpos, jnp.float32))


# ------------------------------------------------------------------------------- the networks


@dataclass(frozen=True)
class Critic:
    """The run's actor and encoders as numpy-in, numpy-out functions."""

    phi: Callable[[np.ndarray, np.ndarray], np.ndarray]  # (obs, action) → φ(s, a)
    psi: Psi
    policy: Callable[[np.ndarray, np.ndarray], np.ndarray]  # (obs, goal) → tanh(μ)

    def phi_pi(self, obs: np.ndarray, goal: np.ndarray) -> np.ndarray:
        return self.phi(obs, self.policy(obs, goal))


def make_critic(params: dict[str, Any], network: NetworkConfig, action_dim: int) -> Critic:
    """The run's networks at their shapes (`network`: the actor's and the critic's)."""
    actor_p, sa_p, g_p = params["actor"], params["sa_encoder"], params["g_encoder"]
    actor = Actor(network, action_dim)
    sa_enc = g_enc = Encoder(network)
    policy = jax.jit(lambda o, g: deterministic_action(actor, actor_p, o, g))
    phi = jax.jit(lambda o, a: sa_enc.apply({"params": sa_p}, jnp.concatenate([o, a], axis=-1)))
    psi = jax.jit(lambda g: g_enc.apply({"params": g_p}, g))
    return Critic(
        phi=lambda o, a: np.asarray(phi(jnp.asarray(o), jnp.asarray(a))),
        psi=lambda g: np.asarray(psi(jnp.asarray(g))),
        policy=lambda o, g: np.asarray(policy(jnp.asarray(o), jnp.asarray(g))),
    )


def episode(
    env: Any, critic_params: dict[str, Any], network: NetworkConfig, key: jax.Array,
    goal: Any = None,
) -> dict[str, np.ndarray]:
    """One deterministic episode from reset(`key`) (its goal replaced by `goal` if given):
    obs, action, achieved goal per step, up to and including a terminating step."""
    actor = Actor(network, env.spec.act_dim)
    actor_p = critic_params["actor"]
    if goal is not None:
        fixed = jnp.asarray(goal, jnp.float32)
        env = copy.copy(env)
        env.sample_goal = lambda rng: fixed

    def run(key: jax.Array) -> tuple[jax.Array, ...]:
        state = env.reset(key)

        def step(
            carry: tuple[Any, jax.Array], _: None
        ) -> tuple[tuple[Any, jax.Array], tuple[Any, ...]]:
            state, running = carry
            action = deterministic_action(actor, actor_p, state.obs, state.goal)
            nxt = env.step(state, action)
            return (nxt, running & ~nxt.done), (state.obs, action, state.achieved_goal, running)

        _, (obs, action, achieved, running) = jax.lax.scan(
            step, (state, jnp.ones((), bool)), None, length=env.episode_length
        )
        return obs, action, achieved, running, state.goal

    obs, action, achieved, running, goal_used = jax.device_get(env_jit(run)(key))
    keep = np.asarray(running, bool)
    return {
        "obs": np.asarray(obs)[keep],
        "action": np.asarray(action)[keep],
        "achieved_goal": np.asarray(achieved)[keep],
        "goal": np.asarray(goal_used),
    }


# ------------------------------------------------------------------------------------ figures


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> Path:
    write_atomic(path, lambda tmp: fig.savefig(tmp, dpi=110))
    _plt().close(fig)
    return path


def plot_value_heatmap(
    states: GridStates, values: np.ndarray, goal: np.ndarray, title: str, path: Path,
    start: np.ndarray | None = None,
) -> Path:
    """The value grid, walls (hatched), the goal (star) and the argmax (cross)."""
    from matplotlib.patches import Circle, Rectangle

    plt = _plt()
    grid = states.grid
    fig, ax = plt.subplots(figsize=(6.2, 5.4), constrained_layout=True)
    x0, x1, y0, y1 = grid.extent
    image = ax.imshow(np.ma.masked_invalid(values), origin="lower", cmap=VALUE_CMAP,
                      extent=(x0, x1, y0, y1), interpolation="nearest")
    bar = fig.colorbar(image, ax=ax)
    bar.set_label("V(s, g) = −‖φ(s, π(s, g)) − ψ(g)‖")
    for x, y, w, h in states.walls:
        ax.add_patch(Rectangle((x, y), w, h, facecolor="0.55", edgecolor="0.3", hatch="//",
                               lw=0.8))
    if states.reach is not None:  # the arm's full reach (its joint limits may allow less)
        cx, cy, _, r_max = states.reach
        ax.add_patch(Circle((cx, cy), r_max, fill=False, color="0.4", ls="--", lw=0.8))
    if np.isfinite(values).any():
        best = argmax_point(grid, values)
        ax.plot(*best, marker="x", color="red", ms=10, mew=2, ls="", label="argmax V")
    ax.plot(goal[0], goal[1], marker="*", color="white", mec="black", ms=16, ls="", label="goal")
    if start is not None:
        ax.plot(start[0], start[1], marker="o", color="white", mec="black", ms=7, ls="",
                label="episode start")
    for x, y, w, h in states.walls:  # the whole layout in view, its outer walls included
        x0, x1, y0, y1 = min(x0, x), max(x1, x + w), min(y0, y), max(y1, y + h)
    ax.set_xlim(x0, x1)
    ax.set_ylim(y0, y1)
    ax.set_aspect("equal")
    ax.set_xlabel("x (m)")
    ax.set_ylabel("y (m)")
    ax.legend(loc="upper right", fontsize=8, framealpha=0.8)
    ax.set_title(title, fontsize=10)
    return _save(fig, path)


def plot_embeddings(
    projected: np.ndarray, psi_projected: np.ndarray, projection: Projection,
    energies: np.ndarray, distances: np.ndarray, radius: float, title: str, path: Path,
) -> Path:
    """φ(s_t, a_t) in the PCA plane coloured by t, ψ(g) marked; energy and distance over t."""
    plt = _plt()
    fig, (ax, ax_t) = plt.subplots(1, 2, figsize=(11, 4.6), constrained_layout=True,
                                   gridspec_kw={"width_ratios": [1.1, 1]})
    t = np.arange(len(projected))
    ax.plot(projected[:, 0], projected[:, 1], color="0.75", lw=0.6, zorder=1)
    points = ax.scatter(projected[:, 0], projected[:, 1], c=t, cmap=TIME_CMAP, s=10, zorder=2)
    fig.colorbar(points, ax=ax, label="step t")
    ax.plot(*projected[0], marker="o", color="white", mec="black", ms=8, ls="", label="φ at t=0")
    ax.plot(*psi_projected, marker="*", color="gold", mec="black", ms=18, ls="", label="ψ(goal)")
    ev = projection.explained_variance
    ax.set_xlabel(f"PC 1 ({ev[0]:.0%} of φ's variance)")
    ax.set_ylabel(f"PC 2 ({ev[1]:.0%})")
    ax.set_title("φ(s_t, a_t) along the episode, PCA to 2-D", fontsize=10)
    ax.legend(loc="best", fontsize=8)
    ax.grid(alpha=0.3)
    ax_t.plot(t, energies, color="tab:blue")
    ax_t.set_xlabel("step t")
    ax_t.set_ylabel("f(s_t, a_t, g) = −‖φ − ψ‖", color="tab:blue")
    ax_d = ax_t.twinx()
    ax_d.plot(t, distances, color="tab:red")
    ax_d.axhline(radius, color="tab:red", ls="--", lw=0.8)
    ax_d.set_ylabel("distance to goal (m; dashed: success radius)", color="tab:red")
    ax_t.grid(alpha=0.3)
    ax_t.set_title("energy and distance along the episode", fontsize=10)
    fig.suptitle(title, fontsize=11)
    return _save(fig, path)


# --------------------------------------------------------------------------------- the command


def analyze_run(
    run_dir: Path,
    step: int | None = None,
    goal: tuple[float, ...] | None = None,
    grid: int = 41,
    out: Path | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Draw a run's value heatmap and episode embeddings; returns what `analysis.json` holds."""
    from crl.sim import tasks
    from crl.train.checkpoint import load_run

    if grid < 2:
        raise ConfigError(f"grid: need at least 2 points per axis, got {grid}")
    run = load_run(run_dir, step)
    env = tasks.make(run.config["task"], dr="off", action=run.spec.action)
    if goal is not None and len(goal) != env.spec.goal_dim:
        raise ConfigError(
            f"goal: {run.config['task']} goals have {env.spec.goal_dim} coordinates "
            f"({env.config.goal_axes}), got {len(goal)}"
        )
    net = run.spec.network
    assert net is not None  # the trainer always writes it
    network = network_config(net, run.params)
    critic = make_critic(run.params, network, env.spec.act_dim)
    out = Path(out) if out is not None else Path(run_dir) / ANALYSIS_DIR
    key = jax.random.PRNGKey(seed)

    ep = episode(env, run.params, network, key, goal)
    g = np.asarray(ep["goal"], np.float64)
    title = f"{run.config['task']} @ {run.step:,} steps, depth {net.depth}"
    result: dict[str, Any] = {
        "run": str(run_dir),
        "task": run.config["task"],
        "step": run.step,
        "seed": seed,
        "goal": g.tolist(),
        "energy": ENERGY,
        "dr": "off",
    }

    result["heatmap"] = value_heatmap(
        env, critic, grid, g, key, ep["achieved_goal"][0], f"{title}: critic value, fixed goal",
        out / HEATMAP_FILE,
    )
    if result["heatmap"] is None:
        result["heatmap_skipped"] = (
            f"{run.config['task']}: no grid of states for this robot (a free-floating base or "
            "a planar two-joint arm is needed)"
        )
    result["embeddings"] = episode_embeddings(
        critic, ep, g, env.spec.success_radius, f"{title}: one deterministic episode",
        out / EMBEDDINGS_FILE,
    )
    result["json"] = str(out / JSON_FILE)
    write_json(out / JSON_FILE, result, sort_keys=True)
    return result


def value_heatmap(
    env: Any, critic: Critic, grid: int, goal: np.ndarray, key: jax.Array, start: np.ndarray,
    title: str, path: Path,
) -> dict[str, Any] | None:
    """The critic's value for `goal` over a `grid` × `grid` of states, plotted to `path` (the
    episode's `start` marked); what analysis.json says of it. None: no grid of states for this
    robot (`grid_states`)."""
    states = grid_states(env, grid, goal)
    if states is None:
        return None
    flat_q = states.qpos.reshape(-1, states.qpos.shape[-1])
    valid = states.valid.reshape(-1)
    obs = np.zeros((flat_q.shape[0], env.spec.obs_dim), np.float32)
    achieved = np.full((flat_q.shape[0], 2), np.nan)
    if valid.any():
        posed = jax.device_get(states_at(env, flat_q[valid], goal, key))
        obs[valid] = np.asarray(posed.obs)
        achieved[valid] = np.asarray(posed.achieved_goal)[:, :2]
    placed = np.abs(achieved[valid] - states.grid.points.reshape(-1, 2)[valid])
    values = value_grid(critic.phi_pi, critic.psi, obs.reshape(*states.valid.shape, -1),
                        states.valid, goal)
    best = argmax_point(states.grid, values) if np.isfinite(values).any() else None
    nearest = _nearest_valid(states, goal)
    x0, x1, y0, y1 = states.grid.extent
    return {
        "file": str(plot_value_heatmap(states, values, goal, title, path, start=start)),
        "states": states.method,
        "grid": {"size": grid, "x": [x0, x1], "y": [y0, y1],
                 "valid_points": int(states.valid.sum())},
        "value_min": _finite(np.nanmin(values)) if best else None,
        "value_max": _finite(np.nanmax(values)) if best else None,
        "argmax": list(best) if best else None,
        "argmax_distance_to_goal": (float(np.linalg.norm(np.array(best) - goal[:2]))
                                    if best else None),
        "value_at_goal": (None if nearest is None
                          else _finite(values[nearest[0], nearest[1]])),
        "placement_error_max": float(placed.max()) if placed.size else None,
    }


def episode_embeddings(
    critic: Critic, ep: dict[str, np.ndarray], goal: np.ndarray, success_radius: float,
    title: str, path: Path,
) -> dict[str, Any]:
    """The episode's φ(s, a) and the goal's ψ(g) projected to 2-D, plotted to `path` with their
    energies and distances to the goal; what analysis.json says of them."""
    sa = critic.phi(ep["obs"], ep["action"])
    psi_g = critic.psi(goal[None].astype(np.float32))[0]
    projection = pca_2d(sa, psi_g)
    energies = np.asarray(energy(jnp.asarray(sa), jnp.asarray(psi_g)[None]), np.float64)
    distances = np.linalg.norm(ep["achieved_goal"] - goal, axis=-1)
    return {
        "file": str(plot_embeddings(
            projection(sa), projection(psi_g), projection, energies, distances,
            success_radius, title, path,
        )),
        "steps": len(sa),
        "explained_variance": projection.explained_variance.tolist(),
        "energy_first": float(energies[0]),
        "energy_last": float(energies[-1]),
        "distance_first": float(distances[0]),
        "distance_last": float(distances[-1]),
    }


def _nearest_valid(states: GridStates, goal: np.ndarray) -> tuple[int, int] | None:
    """The valid grid point nearest the goal's xy (None if no point is valid)."""
    d = np.linalg.norm(states.grid.points - goal[:2], axis=-1)
    d[~states.valid] = np.inf
    if not np.isfinite(d).any():
        return None
    iy, ix = np.unravel_index(int(np.argmin(d)), d.shape)
    return int(iy), int(ix)


def _finite(x: Any) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None
