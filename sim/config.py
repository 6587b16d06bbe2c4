"""Task and domain-randomization configs for the goal-reaching envs.

Everything here is a frozen dataclass validated in `__post_init__`, so a bad value fails in plain
Python with one line naming the field (`ConfigError`) before any model is compiled or traced.
The goal and start samplers are part of the config because the policy spec publishes the goal
bounds they cover: the runtime rejects goals the policy never trained on.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp

Range = tuple[float, float]
AXES = "xyz"
GOAL_KINDS = ("site", "body")
GOAL_FRAMES = ("world",)


class ConfigError(ValueError):
    """A task or DR config that cannot work; the message names the offending field."""


@dataclass(frozen=True)
class ObservationField:
    """What one named observation extractor returns (the extractors live in `crl.sim.env`).

    `needs` is the TaskConfig field naming what the extractor reads ("" = the actuated joints);
    its value fills the `{}` in `meaning`. `sensed` is False for what the controller knows
    exactly rather than measures (its own last command): observation noise leaves it alone.
    """

    meaning: str
    frame: str = ""
    needs: str = ""
    sensed: bool = True


# The registry of observation fields a task may list, in the order a config names them.
OBSERVATION_FIELDS: Mapping[str, ObservationField] = {
    "joint_pos": ObservationField("actuated joint angles (rad) or slides (m)"),
    "joint_vel": ObservationField("actuated joint velocities (rad/s or m/s)"),
    "base_pos": ObservationField("position of base body {} (m)", "world", "base_body"),
    "base_quat": ObservationField(
        "orientation of base body {} (quaternion w, x, y, z)", "world", "base_body"
    ),
    "base_lin_vel": ObservationField("linear velocity of base body {} (m/s)", "base", "base_body"),
    "base_ang_vel": ObservationField(
        "angular velocity of base body {} (rad/s)", "base", "base_body"
    ),
    "base_gravity": ObservationField(
        "unit gravity direction seen from base body {}", "base", "base_body"
    ),
    "site_pos": ObservationField("position of site {} (m)", "world", "obs_site"),
    # The newest command in the env's action queue (before any action delay), mapped back from
    # the clipped physical command: (physical - action.offset) / action.scale; at reset, the
    # start hold command. A robot's controller feeds back the command it sent, the same way.
    "last_action": ObservationField(
        "the previous action commanded, normalized to [-1, 1]", sensed=False
    ),
}


def _check_range(value: Any, where: str, *, positive: bool = False) -> None:
    if not (isinstance(value, tuple) and len(value) == 2):
        raise ConfigError(f"{where}: expected a (low, high) tuple, got {value!r}")
    low, high = value
    if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in value):
        raise ConfigError(f"{where}: non-finite or non-numeric entry in {value!r}")
    if low > high:
        raise ConfigError(f"{where}: low {low} > high {high}; give (low, high) with low <= high")
    if positive and low <= 0:
        raise ConfigError(f"{where}: scale must be positive, got low {low}")
    if low < 0:
        raise ConfigError(f"{where}: must not be negative, got low {low}")


@dataclass(frozen=True)
class DRConfig:
    """Per-episode domain randomization. Ranges are uniform (low, high) draws.

    The physical ranges are scale factors on the nominal model: sliding friction of each geom,
    mass (and inertia) of each body, damping of each dof, and gain of each actuator (kp of a
    position servo, force per ctrl unit of a motor). Observation noise is Gaussian with a std
    drawn per episode, in the observation's own units, on the sensed fields (not `last_action`);
    the action delay is an integer number of control steps drawn from 0..max_action_delay. The
    defaults are the nominal model.
    """

    friction: Range = (1.0, 1.0)
    body_mass: Range = (1.0, 1.0)
    joint_damping: Range = (1.0, 1.0)
    actuator_gain: Range = (1.0, 1.0)
    obs_noise_std: Range = (0.0, 0.0)
    max_action_delay: int = 0

    def __post_init__(self) -> None:
        # Ranges read back from JSON (a spec's provenance, a config file) arrive as lists.
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, list):
                object.__setattr__(self, f.name, tuple(value))
        _check_range(self.friction, "DRConfig.friction")
        _check_range(self.body_mass, "DRConfig.body_mass", positive=True)
        _check_range(self.joint_damping, "DRConfig.joint_damping")
        _check_range(self.actuator_gain, "DRConfig.actuator_gain", positive=True)
        _check_range(self.obs_noise_std, "DRConfig.obs_noise_std")
        delay = self.max_action_delay
        if not isinstance(delay, int) or isinstance(delay, bool) or delay < 0:
            raise ConfigError(
                f"DRConfig.max_action_delay: must be an int >= 0 control steps, got {delay!r}"
            )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# Training ranges follow common sim-to-real practice for small robots; the held-out ranges are
# wider on every axis, so evaluation under them measures robustness outside what training saw.
DR_OFF = DRConfig()
DR_TRAIN = DRConfig(
    friction=(0.7, 1.3),
    body_mass=(0.9, 1.1),
    joint_damping=(0.8, 1.2),
    actuator_gain=(0.9, 1.1),
    obs_noise_std=(0.0, 0.01),
    max_action_delay=1,
)
DR_HELD_OUT = DRConfig(
    friction=(0.4, 1.8),
    body_mass=(0.75, 1.3),
    joint_damping=(0.5, 1.6),
    actuator_gain=(0.75, 1.3),
    obs_noise_std=(0.0, 0.02),
    max_action_delay=2,
)


def _floats(values: Any, where: str) -> tuple[float, ...]:
    try:
        out = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: expected a tuple of numbers, got {values!r}") from None
    if not all(math.isfinite(v) for v in out):
        raise ConfigError(f"{where}: non-finite entry in {out}")
    return out


@dataclass(frozen=True)
class BoxSampler:
    """Uniform in an axis-aligned box."""

    low: tuple[float, ...]
    high: tuple[float, ...]

    def __post_init__(self) -> None:
        low, high = _floats(self.low, "BoxSampler.low"), _floats(self.high, "BoxSampler.high")
        if not low or len(low) != len(high):
            raise ConfigError(f"BoxSampler: low {low} and high {high} need the same, nonzero size")
        for i, (lo, hi) in enumerate(zip(low, high, strict=True)):
            if lo > hi:
                raise ConfigError(f"BoxSampler: low[{i}]={lo} > high[{i}]={hi}")

    @property
    def size(self) -> int:
        return len(self.low)

    def bounds(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        return tuple(self.low), tuple(self.high)

    def sample(self, rng: jax.Array) -> jax.Array:
        return jax.random.uniform(
            rng, (self.size,), minval=jnp.asarray(self.low), maxval=jnp.asarray(self.high)
        )


@dataclass(frozen=True)
class AnnulusSampler:
    """A point in the plane at radius r_min..r_max around `center`, any direction.

    `uniform_area` spreads points evenly over the annulus; without it the radius itself is
    uniform (what the paper's code does, which favours near goals). `z`, if set, is appended as a
    fixed third coordinate (e.g. a standing torso height).
    """

    r_min: float
    r_max: float
    center: tuple[float, float] = (0.0, 0.0)
    uniform_area: bool = True
    z: float | None = None

    def __post_init__(self) -> None:
        if not (math.isfinite(self.r_min) and math.isfinite(self.r_max)):
            raise ConfigError(f"AnnulusSampler: non-finite radius ({self.r_min}, {self.r_max})")
        if not 0 <= self.r_min <= self.r_max:
            raise ConfigError(
                f"AnnulusSampler.r_min: need 0 <= r_min <= r_max, got {self.r_min}, {self.r_max}"
            )
        if len(_floats(self.center, "AnnulusSampler.center")) != 2:
            raise ConfigError(f"AnnulusSampler.center: need (x, y), got {self.center}")

    @property
    def size(self) -> int:
        return 2 if self.z is None else 3

    def bounds(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        cx, cy = self.center
        z = () if self.z is None else (self.z,)
        return (cx - self.r_max, cy - self.r_max, *z), (cx + self.r_max, cy + self.r_max, *z)

    def sample(self, rng: jax.Array) -> jax.Array:
        k_r, k_a = jax.random.split(rng)
        u = jax.random.uniform(k_r)
        if self.uniform_area:
            r = jnp.sqrt(self.r_min**2 + u * (self.r_max**2 - self.r_min**2))
        else:
            r = self.r_min + u * (self.r_max - self.r_min)
        angle = jax.random.uniform(k_a, minval=0.0, maxval=2 * jnp.pi)
        xy = jnp.asarray(self.center) + r * jnp.stack([jnp.cos(angle), jnp.sin(angle)])
        return xy if self.z is None else jnp.append(xy, self.z)


@dataclass(frozen=True)
class ChoiceSampler:
    """One of a fixed set of points (e.g. maze cell centres), plus uniform ±noise per axis."""

    points: tuple[tuple[float, ...], ...]
    noise: float = 0.0

    def __post_init__(self) -> None:
        if not self.points:
            raise ConfigError("ChoiceSampler.points: empty")
        sizes = {len(_floats(p, "ChoiceSampler.points")) for p in self.points}
        if len(sizes) != 1 or 0 in sizes:
            raise ConfigError(f"ChoiceSampler.points: points of different sizes {sorted(sizes)}")
        if not (math.isfinite(self.noise) and self.noise >= 0):
            raise ConfigError(f"ChoiceSampler.noise: must be >= 0, got {self.noise}")

    @property
    def size(self) -> int:
        return len(self.points[0])

    def bounds(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        cols = list(zip(*self.points, strict=True))
        return (
            tuple(min(c) - self.noise for c in cols),
            tuple(max(c) + self.noise for c in cols),
        )

    def sample(self, rng: jax.Array) -> jax.Array:
        k_i, k_n = jax.random.split(rng)
        point = jnp.asarray(self.points)[jax.random.randint(k_i, (), 0, len(self.points))]
        if self.noise == 0:
            return point
        return point + jax.random.uniform(k_n, (self.size,), minval=-self.noise, maxval=self.noise)


Sampler = BoxSampler | AnnulusSampler | ChoiceSampler


@dataclass(frozen=True)
class StartSampler:
    """Where episodes start: a keyframe (or the model's qpos0) plus noise.

    `joint_noise` is uniform ±noise on every hinge/slide joint (clipped to its range);
    `vel_noise` is the std of Gaussian noise on every dof velocity; `base_xy`, when set, places
    the free-floating base in the plane (e.g. a maze's start cell).
    """

    keyframe: str = ""
    joint_noise: float = 0.0
    vel_noise: float = 0.0
    base_xy: Sampler | None = None

    def __post_init__(self) -> None:
        for name in ("joint_noise", "vel_noise"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                raise ConfigError(f"StartSampler.{name}: must be >= 0, got {v!r}")
        if self.base_xy is not None and self.base_xy.size != 2:
            raise ConfigError(
                f"StartSampler.base_xy: samples {self.base_xy.size} coordinates, need 2 (x, y)"
            )


@dataclass(frozen=True)
class TaskConfig:
    """One goal-reaching task: a robot model plus what "reaching a goal" means on it.

    The achieved goal is the `goal_axes` coordinates of a site or body (`goal_kind`, `goal_name`)
    in `goal_frame`. `actuated_joints` picks which joints the policy drives (each must have one
    joint actuator; empty = every joint actuator, in model order). `observation` lists fields of
    `OBSERVATION_FIELDS` in the order the policy sees them. `control_hz` must divide the model's
    physics rate (substeps = 1 / (control_hz * timestep)).
    """

    name: str
    model_file: str  # relative to crl/sim/assets/, or absolute
    goal_name: str
    goal_sampler: Sampler
    observation: tuple[str, ...]
    control_hz: float
    episode_length: int
    success_radius: float
    goal_kind: str = "site"
    goal_axes: str = "xy"
    goal_frame: str = "world"
    actuated_joints: tuple[str, ...] = ()
    base_body: str = ""
    obs_site: str = ""
    start: StartSampler = field(default_factory=StartSampler)
    dr_train: DRConfig = DR_TRAIN
    dr_held_out: DRConfig = DR_HELD_OUT

    def __post_init__(self) -> None:
        if not self.name:
            raise ConfigError("TaskConfig.name: empty")
        if not self.model_file:
            raise ConfigError("TaskConfig.model_file: empty; name an MJCF file in sim/assets/")
        if self.goal_kind not in GOAL_KINDS:
            raise ConfigError(
                f"TaskConfig.goal_kind: {self.goal_kind!r} is not one of {GOAL_KINDS}"
            )
        if not self.goal_name:
            raise ConfigError(f"TaskConfig.goal_name: empty; name the {self.goal_kind} to track")
        axes = self.goal_axes
        if not axes or any(a not in AXES for a in axes) or len(set(axes)) != len(axes):
            raise ConfigError(
                f"TaskConfig.goal_axes: {axes!r} must be distinct letters of {AXES!r}"
            )
        if self.goal_frame not in GOAL_FRAMES:
            raise ConfigError(
                f"TaskConfig.goal_frame: {self.goal_frame!r} is not supported ({GOAL_FRAMES})"
            )
        if not isinstance(self.goal_sampler, Sampler):
            raise ConfigError(
                f"TaskConfig.goal_sampler: {type(self.goal_sampler).__name__} is not a sampler"
            )
        if self.goal_sampler.size != len(axes):
            raise ConfigError(
                f"TaskConfig.goal_sampler: samples {self.goal_sampler.size} coordinates but "
                f"goal_axes {axes!r} has {len(axes)}"
            )
        if not self.observation:
            raise ConfigError("TaskConfig.observation: no fields")
        for name in self.observation:
            if name not in OBSERVATION_FIELDS:
                raise ConfigError(
                    f"TaskConfig.observation: unknown field {name!r}; known fields: "
                    f"{', '.join(OBSERVATION_FIELDS)}"
                )
            needs = OBSERVATION_FIELDS[name].needs
            if needs and not getattr(self, needs):
                raise ConfigError(
                    f"TaskConfig.{needs}: observation field {name!r} needs it; set {needs}"
                )
        if self.start.base_xy is not None and not self.base_body:
            raise ConfigError("TaskConfig.base_body: start.base_xy places the base; name it")
        if len(set(self.observation)) != len(self.observation):
            raise ConfigError(f"TaskConfig.observation: duplicate fields in {self.observation}")
        if len(set(self.actuated_joints)) != len(self.actuated_joints):
            raise ConfigError(f"TaskConfig.actuated_joints: duplicates in {self.actuated_joints}")
        if not (math.isfinite(self.control_hz) and self.control_hz > 0):
            raise ConfigError(f"TaskConfig.control_hz: must be positive, got {self.control_hz}")
        n = self.episode_length
        if not isinstance(n, int) or isinstance(n, bool) or n <= 0:
            raise ConfigError(f"TaskConfig.episode_length: must be a positive int, got {n!r}")
        if not (math.isfinite(self.success_radius) and self.success_radius > 0):
            raise ConfigError(
                f"TaskConfig.success_radius: must be positive, got {self.success_radius}"
            )
        for name in ("dr_train", "dr_held_out"):
            if not isinstance(getattr(self, name), DRConfig):
                raise ConfigError(f"TaskConfig.{name}: expected a DRConfig")

    def replace(self, **changes: Any) -> TaskConfig:
        return dataclasses.replace(self, **changes)
