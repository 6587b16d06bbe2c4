"""The robustness envelope: how far past its training ranges a policy keeps holding the goal.

For each randomized quantity (friction, body mass, joint damping, actuator gain, observation
noise, action delay), every robot of a batch is set to one value of it, from well below to well
above the training range, the other quantities nominal (no noise, no delay). At each value the
same episodes (starts and goals, from one seed) run with the deterministic policy, and the point
records at-the-end success (inside the radius when the episode ends), the median final distance
and the oscillation figure (`crl.core.oscillation`). Physical quantities scale every
body, joint and actuator by one factor (`Randomizer.fixed`); noise scales each sensed field's
largest training std; delay is in control steps.

The policy runs through the runtime's own backend (`crl.runtime.policy.load_policy`): `jax` for a
run's checkpoint, `ort` for an exported ONNX file, stepped in a batch on the task's MJX env. The
same code scores the trained networks and the file a robot runs.

A quantity's envelope is the run of values around nominal (1x, or 0 for noise and delay) where
at-the-end success stays at or above a threshold (90% by default): `holds` in the JSON.
"""

from __future__ import annotations

import dataclasses
import datetime
import math
import platform
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from crl.core.oscillation import NEAR_GOAL_RADII, action_flips, oscillation
from crl.runtime.backend import Policy

if TYPE_CHECKING:  # the sim is imported where an envelope runs: `crl-run` loads this module
    from crl.sim.config import DRConfig, Ranges

PHYSICAL = ("friction", "body_mass", "joint_damping", "actuator_gain")
QUANTITIES = (*PHYSICAL, "obs_noise", "action_delay")
UNITS = {"obs_noise": "x training noise std", "action_delay": "control steps"}
# Where each quantity is nominal: the middle of its envelope.
NOMINAL = {**dict.fromkeys(PHYSICAL, 1.0), "obs_noise": 0.0, "action_delay": 0.0}


class RobustnessError(ValueError):
    """A grid or threshold that cannot be measured: one line for the user."""


@dataclass(frozen=True)
class Grid:
    """The values each quantity takes; the defaults run on a 2-core CPU in about a minute for
    the reacher."""

    scales: tuple[float, ...] = (0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 3.0, 4.0)
    """Factors on friction, body mass, joint damping and actuator gain (1 is the model's)."""
    noise: tuple[float, ...] = (0.0, 0.5, 1.0, 2.0, 4.0)
    """Observation noise as multiples of each field's largest training std."""
    delays: tuple[int, ...] = (0, 1, 2, 3, 4)
    """Action delays, control steps."""
    episodes: int = 256
    """Episodes per point (the same starts and goals at every point)."""
    seed: int = 0
    """Seeds the episodes' starts and goals, the same at every point."""
    threshold: float = 0.9
    """At-the-end success at or above which a point holds."""

    def check(self) -> None:
        for name, values in (("scales", self.scales), ("noise", self.noise)):
            if not values or not all(math.isfinite(v) and v >= 0 for v in values):
                raise RobustnessError(f"{name}: give finite values >= 0, got {values}")
        if not all(v > 0 for v in self.scales):
            raise RobustnessError(f"scales: a factor must be positive, got {self.scales}")
        if not self.delays or not all(isinstance(d, int) and 0 <= d <= 100 for d in self.delays):
            raise RobustnessError(f"delays: give control steps between 0 and 100, got "
                                  f"{self.delays}")
        if not 1 <= self.episodes <= 100_000:
            raise RobustnessError(f"episodes: between 1 and 100000, got {self.episodes}")
        if not 0.0 < self.threshold <= 1.0:
            raise RobustnessError(f"threshold: in (0, 1], got {self.threshold}")

    def values(self, quantity: str) -> tuple[float, ...]:
        if quantity in PHYSICAL:
            return tuple(sorted(set(self.scales)))
        if quantity == "obs_noise":
            return tuple(sorted(set(self.noise)))
        return tuple(float(d) for d in sorted(set(self.delays)))


@dataclass
class Point:
    value: float
    final_success_rate: float
    success_rate: float
    final_distance_median: float
    oscillation: float


@dataclass
class Envelope:
    task: str
    policy: str
    backend: str
    grid: Grid
    ranges: dict[str, dict[str, list[list[float]]]]
    points: dict[str, list[Point]] = field(default_factory=dict)

    def holds(self) -> dict[str, list[float] | None]:
        """Per quantity, [lowest, highest] of the contiguous run of values around nominal where
        at-the-end success ≥ threshold (None where nominal itself fails or is not measured)."""
        out: dict[str, list[float] | None] = {}
        for q, pts in self.points.items():
            ok = [p.final_success_rate >= self.grid.threshold for p in pts]
            values = [p.value for p in pts]
            if NOMINAL[q] not in values or not ok[values.index(NOMINAL[q])]:
                out[q] = None
                continue
            lo = hi = values.index(NOMINAL[q])
            while lo > 0 and ok[lo - 1]:
                lo -= 1
            while hi + 1 < len(ok) and ok[hi + 1]:
                hi += 1
            out[q] = [values[lo], values[hi]]
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "benchmark": "robustness",
            "task": self.task,
            "policy": self.policy,
            "backend": self.backend,
            "grid": asdict(self.grid),
            "ranges": self.ranges,
            "points": {q: [asdict(p) for p in pts] for q, pts in self.points.items()},
            "holds": self.holds(),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "device": {"machine": platform.machine(), "processor": platform.processor()},
        }


def noise_reference(train: DRConfig, fields: Sequence[str]) -> dict[str, float]:
    """Each sensed observed field's largest training std: 1x on the noise axis."""
    from crl.sim.config import OBSERVATION_FIELDS

    return {n: train.noise(n)[-1][1] for n in fields
            if OBSERVATION_FIELDS[n].sensed and train.noise(n)[-1][1] > 0}


def _ranges(train: DRConfig, held_out: DRConfig, reference: dict[str, float]) -> dict[str, Any]:
    """The training and held-out ranges in each axis's units, for the picture and the JSON."""
    def spans(r: Ranges) -> list[list[float]]:
        return [[float(a), float(b)] for a, b in r]

    def noise(cfg: DRConfig) -> list[list[float]]:
        ratios = [[r[0] / ref, r[1] / ref] for n, ref in reference.items() for r in cfg.noise(n)]
        return [[min(r[0] for r in ratios), max(r[1] for r in ratios)]] if ratios else []

    out: dict[str, Any] = {q: {"train": spans(getattr(train, q)),
                               "held_out": spans(getattr(held_out, q))} for q in PHYSICAL}
    out["obs_noise"] = {"train": noise(train), "held_out": noise(held_out)}
    out["action_delay"] = {"train": [[float(d), float(d)] for d in train.action_delay],
                           "held_out": [[float(d), float(d)] for d in held_out.action_delay]}
    return out


def run_envelope(policy: Policy, task: str, grid: Grid, label: str) -> Envelope:
    """Measure `policy` (a loaded backend) over `grid` on `task`'s MJX env."""
    import jax
    import jax.numpy as jnp

    from crl.sim import tasks
    from crl.sim.config import OBSERVATION_FIELDS, DRConfig
    from crl.sim.env import jit as env_jit

    grid.check()
    if policy.spec.task != task:
        raise RobustnessError(f"task: the policy was trained for {policy.spec.task!r}, not "
                              f"{task!r}")
    env = tasks.make(task, dr="off", action=policy.spec.action)
    # The action queue must hold the longest delay's commands in flight.
    env.use_ranges(DRConfig(action_delay=tuple(range(max(grid.delays) + 1))))
    reference = noise_reference(env.config.dr_train, env.config.observation)
    noise_index = {n: i for i, n in enumerate(OBSERVATION_FIELDS)}
    envelope = Envelope(task, label, policy.backend, grid,
                        _ranges(env.config.dr_train, env.config.dr_held_out, reference))
    keys = jax.random.split(jax.random.PRNGKey(grid.seed), grid.episodes)
    def reset_one(key: jax.Array) -> Any:
        return env.reset(key, evaluation=True)

    reset = env_jit(jax.vmap(reset_one))
    step = env_jit(jax.vmap(env.step))
    radius = env.config.success_radius

    def robot(quantity: str, value: float) -> Any:
        if quantity in PHYSICAL:
            scale = {q: value if q == quantity else 1.0 for q in PHYSICAL}
            return env.randomizer.fixed(
                friction=scale["friction"], body_mass=scale["body_mass"],
                joint_damping=scale["joint_damping"], actuator_gain=scale["actuator_gain"])
        if quantity == "obs_noise":
            std = np.zeros(len(OBSERVATION_FIELDS), np.float32)
            for name, ref in reference.items():
                std[noise_index[name]] = value * ref
            return env.randomizer.fixed(obs_noise_std=jnp.asarray(std))
        return env.randomizer.fixed(action_delay=int(value))

    def distance_to_goal(state: Any) -> np.ndarray:
        gap: np.ndarray = np.asarray(state.achieved_goal - state.goal)
        return np.asarray(np.linalg.norm(gap, axis=-1))

    start = reset(keys)  # the same starts and goals at every point
    start_distance = distance_to_goal(start)
    for quantity in QUANTITIES:
        points = []
        for value in grid.values(quantity):
            draw = robot(quantity, value)
            # Every episode on this one robot (the reset's own draw replaced).
            state = dataclasses.replace(start, dr=jax.tree.map(
                lambda x: jnp.broadcast_to(x, (grid.episodes, *np.shape(x))), draw))
            running = np.ones(grid.episodes, bool)
            before = start_distance
            actions, near, distances, counted = [], [], [], []
            for _ in range(env.episode_length):
                action = policy.act(np.asarray(state.obs), np.asarray(state.goal))
                state = step(state, jnp.asarray(action))
                actions.append(action)
                near.append(running & (before <= NEAR_GOAL_RADII * radius))
                before = distance_to_goal(state)
                distances.append(before)
                counted.append(running.copy())
                running = running & ~np.asarray(state.done)
            distance = np.stack(distances)
            last = np.stack(counted).sum(axis=0) - 1
            final = distance[last, np.arange(grid.episodes)]
            reached = ((distance <= radius) & np.stack(counted)).any(axis=0)
            flips, chances = action_flips(np.stack(actions), np.stack(near))
            points.append(Point(
                value=float(value),
                final_success_rate=float(np.mean(final <= radius)),
                success_rate=float(np.mean(reached)),
                final_distance_median=float(np.median(final)),
                oscillation=oscillation(flips, chances),
            ))
        envelope.points[quantity] = points
    return envelope


def plot_envelope(envelopes: Sequence[dict[str, Any]], out: Path) -> Path:
    """One panel per quantity: at-the-end success (solid) and oscillation (dotted) against the
    value, training ranges shaded green and held-out ones orange; several envelopes (JSON
    dicts of `Envelope.to_dict`) draw side by side, the first one's ranges shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    first = envelopes[0]
    fig, axes = plt.subplots(2, 3, figsize=(14, 7.2), constrained_layout=True)
    for ax, quantity in zip(axes.flat, QUANTITIES, strict=True):
        for split, color in (("train", "tab:green"), ("held_out", "tab:orange")):
            for i, (lo, hi) in enumerate(first["ranges"][quantity][split]):
                pad = 0.15 if quantity == "action_delay" else 0.0
                ax.axvspan(lo - pad, hi + pad, color=color, alpha=0.18, lw=0,
                           label=("training range" if split == "train" else "held-out range")
                           if i == 0 else None)
        for k, env in enumerate(envelopes):
            pts = env["points"][quantity]
            x = [p["value"] for p in pts]
            name = Path(env["policy"]).name if len(envelopes) > 1 else ""
            ax.plot(x, [100 * p["final_success_rate"] for p in pts], "-o", ms=3, color=f"C{k}",
                    label=f"{name} at the goal at the end".strip())
            ax.plot(x, [100 * p["oscillation"] for p in pts], ":", color=f"C{k}",
                    label=f"{name} oscillation".strip())
        ax.axhline(100 * first["grid"]["threshold"], color="gray", lw=0.8, ls="--")
        if quantity in PHYSICAL:
            ax.set_xscale("log", base=2)
            ax.set_xlabel("x nominal")
        else:
            ax.set_xlabel(UNITS[quantity])
        ax.set_title(quantity.replace("_", " "))
        ax.set_ylim(-2, 102)
        ax.set_ylabel("%")
        ax.grid(alpha=0.3)
    axes.flat[0].legend(fontsize=7, loc="lower left")
    fig.suptitle(f"{first['task']}: robustness envelope, one quantity at a time "
                 f"({first['grid']['episodes']} episodes a point)")
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
