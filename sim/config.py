"""Task and domain-randomization configs for the goal-reaching envs.

Everything here is a frozen dataclass validated in `__post_init__`, so a bad value fails in plain
Python with one line naming the field (`ConfigError`) before any model is compiled or traced.
The goal and start samplers are part of the config because the policy spec publishes the goal
bounds they cover: the runtime rejects goals the policy never trained on. Drawing from them is
jax code, in `crl.sim.sampling`: this module imports no jax, so it stays a plain description.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from crl.core.spec import MAX_GOAL_RAMP_S
from crl.core.usage import ConfigError

Range = tuple[float, float]
# A parameter's draws come uniformly from the union of these (low, high) intervals. One interval is
# an ordinary range; intervals on both sides of a training range make a held-out range none of
# whose draws is a training condition.
Ranges = tuple[Range, ...]
AXES = "xyz"
GOAL_KINDS = ("site", "body")
GOAL_FRAMES = ("world",)


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
    # The paper's simulator state (its tasks observe these; no robot measures cinert or cvel):
    # MuJoCo's own arrays, every joint and every body but the world, in model order. They are
    # exact, not a sensor's reading, so observation noise (sensor noise) leaves them alone.
    "qpos": ObservationField(
        "generalized positions of every joint, model order (free joint: world xyz (m) and "
        "quaternion w, x, y, z; hinges rad, slides m)", "world", sensed=False
    ),
    "qvel": ObservationField(
        "generalized velocities of every dof, model order (free joint: linear m/s in the world "
        "frame, angular rad/s in its body frame; hinges rad/s, slides m/s)", "world", sensed=False
    ),
    "cinert": ObservationField(
        "centre-of-mass inertia of every body but the world, 10 values a body (inertia xx, yy, "
        "zz, xy, xz, yz about its tree's centre of mass, mass x offset, mass)", "world",
        sensed=False,
    ),
    "cvel": ObservationField(
        "centre-of-mass velocity of every body but the world, 6 values a body (angular rad/s, "
        "linear m/s, at its tree's centre of mass)", "world", sensed=False
    ),
    "qfrc_actuator": ObservationField(
        "actuator force on every dof, model order (N m on hinges, N on slides)", sensed=False
    ),
    # The paper's arm tasks observe named parts of the state (its `_get_obs`): the object's
    # position, the arm's joint angles, the end effector's position and velocity, the gap
    # between the fingers. Exact simulator state, as the fields above.
    "goal_pos": ObservationField(
        "position (x, y, z) of the goal's {} (m): the object to move", "world", "goal_name",
        sensed=False,
    ),
    "obs_joint_pos": ObservationField(
        "angles of joints {} (rad; slides m)", "", "obs_joints", sensed=False
    ),
    "body_pos": ObservationField("position of body {} (m)", "world", "obs_body", sensed=False),
    "body_lin_vel": ObservationField(
        "linear velocity of body {}'s origin (m/s)", "world", "obs_body", sensed=False
    ),
    "body_gap": ObservationField(
        "distance between the origins of bodies {} (m)", "", "obs_body_pair", sensed=False
    ),
}


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _ranges(value: Any, where: str, *, positive: bool = False) -> Ranges:
    """`value` as sorted, disjoint `Ranges`: a (low, high) pair or a tuple of them (JSON lists
    too), each low <= high, none negative (none <= 0 with `positive`)."""
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(
        isinstance(v, (int, float)) for v in value
    ):
        value = (value,)  # one interval, written as a plain pair
    if not (isinstance(value, (list, tuple)) and value):
        raise ConfigError(f"{where}: expected a (low, high) pair or a tuple of them, got {value!r}")
    out: list[Range] = []
    for r in value:
        if not (isinstance(r, (list, tuple)) and len(r) == 2):
            raise ConfigError(f"{where}: expected (low, high) pairs, got {r!r}")
        if not all(_number(v) for v in r):
            raise ConfigError(f"{where}: non-finite or non-numeric entry in {tuple(r)!r}")
        low, high = float(r[0]), float(r[1])
        if low > high:
            raise ConfigError(
                f"{where}: low {low} > high {high}; give (low, high) with low <= high"
            )
        if positive and low <= 0:
            raise ConfigError(f"{where}: scale must be positive, got low {low}")
        if low < 0:
            raise ConfigError(f"{where}: must not be negative, got low {low}")
        out.append((low, high))
    out.sort()
    for a, b in itertools.pairwise(out):
        if b[0] <= a[1]:
            raise ConfigError(f"{where}: intervals {a} and {b} meet; merge them into one")
    return tuple(out)


def _meet(a: Ranges, b: Ranges) -> bool:
    """Whether some value lies in both (closed intervals: a shared endpoint counts)."""
    return any(lo_a <= hi_b and lo_b <= hi_a for lo_a, hi_a in a for lo_b, hi_b in b)


DR_PARAMETERS = ("friction", "body_mass", "joint_damping", "actuator_gain")
NO_NOISE: Ranges = ((0.0, 0.0),)


@dataclass(frozen=True)
class DRConfig:
    """Per-episode domain randomization: the robots and sensors an episode may get.

    The physical parameters are scales on the nominal model, each drawn once per episode,
    uniformly over its `Ranges`: `body_mass` per body (inertia scaled with it), `joint_damping`
    per dof, `actuator_gain` per actuator (a position servo's kp, in gain and bias together; a
    motor's force per ctrl unit), and `friction` one factor on the sliding friction of every
    geom, the floor included. A contact's friction is the larger of its two geoms' (MJX and
    MuJoCo C alike), so one common factor s gives every contact exactly s × its nominal friction;
    a draw per geom would give the larger of two draws, skewed high.

    `obs_noise` maps observation fields (`OBSERVATION_FIELDS`) to the std of their Gaussian
    noise, in the field's own units (rad, rad/s, m, ...), drawn per episode and field; a field
    absent gets none, and fields the controller knows exactly (`sensed=False`: `last_action`)
    may not have any. `action_delay` lists the delays, in control steps, an episode draws from
    with equal probability. The defaults are the nominal model.
    """

    friction: Ranges = ((1.0, 1.0),)
    body_mass: Ranges = ((1.0, 1.0),)
    joint_damping: Ranges = ((1.0, 1.0),)
    actuator_gain: Ranges = ((1.0, 1.0),)
    obs_noise: Mapping[str, Ranges] = field(default_factory=dict)
    action_delay: tuple[int, ...] = (0,)

    def __post_init__(self) -> None:
        # Values read back from JSON (a spec's provenance, a config file) arrive as lists.
        for name in DR_PARAMETERS:
            positive = name in ("body_mass", "actuator_gain")
            ranges = _ranges(getattr(self, name), f"DRConfig.{name}", positive=positive)
            object.__setattr__(self, name, ranges)
        if not isinstance(self.obs_noise, Mapping):
            raise ConfigError(
                f"DRConfig.obs_noise: expected a mapping of field name to std ranges, got "
                f"{self.obs_noise!r}"
            )
        noise: dict[str, Ranges] = {}
        for name, value in self.obs_noise.items():
            where = f"DRConfig.obs_noise[{name!r}]"
            if name not in OBSERVATION_FIELDS:
                raise ConfigError(
                    f"{where}: unknown observation field; known: {', '.join(OBSERVATION_FIELDS)}"
                )
            if not OBSERVATION_FIELDS[name].sensed:
                raise ConfigError(
                    f"{where}: the controller knows {name} exactly; it takes no noise"
                )
            noise[name] = _ranges(value, where)
        # Registry order, so equal configs print and serialize alike.
        ordered = {n: noise[n] for n in OBSERVATION_FIELDS if n in noise}
        object.__setattr__(self, "obs_noise", ordered)
        delays = self.action_delay
        if not (
            isinstance(delays, (list, tuple)) and delays
            and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in delays)
        ):
            raise ConfigError(
                f"DRConfig.action_delay: expected a tuple of ints >= 0 (control steps), got "
                f"{delays!r}"
            )
        if len(set(delays)) != len(delays):
            raise ConfigError(f"DRConfig.action_delay: duplicate delays in {tuple(delays)}")
        object.__setattr__(self, "action_delay", tuple(sorted(delays)))

    def __hash__(self) -> int:  # obs_noise is a dict: hash its items
        ranges = tuple(getattr(self, n) for n in DR_PARAMETERS)
        return hash((ranges, tuple(self.obs_noise.items()), self.action_delay))

    @property
    def max_action_delay(self) -> int:
        """The longest delay: the env keeps this many commands in flight (plus the newest)."""
        return max(self.action_delay)

    def noise(self, name: str) -> Ranges:
        """The std ranges of observation field `name` (`NO_NOISE` when it has none)."""
        return self.obs_noise.get(name, NO_NOISE)

    def shared_conditions(self, other: DRConfig, fields: Iterable[str]) -> list[str]:
        """The parameters on which a draw of `self` can equal one of `other`: ranges that meet,
        delays in common, noise compared on the observation `fields`. Empty: disjoint. A
        physical parameter neither randomizes (nominal in both) is no condition of either."""
        nominal = DRConfig().friction  # ((1.0, 1.0),): every physical parameter's default
        shared = [
            n for n in DR_PARAMETERS
            if _meet(getattr(self, n), getattr(other, n))
            and not getattr(self, n) == getattr(other, n) == nominal
        ]
        shared += [
            f"obs_noise[{n!r}]" for n in fields if _meet(self.noise(n), other.noise(n))
        ]
        if set(self.action_delay) & set(other.action_delay):
            shared.append("action_delay")
        return shared

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# The training ranges follow common sim-to-real practice for small robots (noise in each field's
# units: encoder, odometry and IMU noise). The held-out ranges lie outside them on every
# parameter, below and above (friction 0.4-0.6 and 1.4-1.8 against 0.7-1.3 in training), with
# 1.25-2x the training noise and a delay training never had, so a held-out evaluation is of
# unseen dynamics only; a gap between the two keeps held-out draws off the training bounds.
_TRAIN_NOISE: dict[str, Ranges] = {
    "joint_pos": ((0.0, 0.01),),  # rad
    "joint_vel": ((0.0, 0.1),),  # rad/s
    "base_pos": ((0.0, 0.02),),  # m
    "base_quat": ((0.0, 0.01),),
    "base_lin_vel": ((0.0, 0.05),),  # m/s
    "base_ang_vel": ((0.0, 0.1),),  # rad/s
    "base_gravity": ((0.0, 0.02),),
    "site_pos": ((0.0, 0.005),),  # m
}


def held_out_noise(train: Mapping[str, Ranges]) -> dict[str, Ranges]:
    """Held-out observation noise for training noise `train`: per field, a std of 1.25-2x the
    largest training std (above it, never touching it)."""
    return {name: ((1.25 * r[-1][1], 2.0 * r[-1][1]),) for name, r in train.items()}


DR_OFF = DRConfig()
DR_TRAIN = DRConfig(
    friction=((0.7, 1.3),),
    body_mass=((0.9, 1.1),),
    joint_damping=((0.8, 1.2),),
    actuator_gain=((0.9, 1.1),),
    obs_noise=_TRAIN_NOISE,
    action_delay=(0, 1),
)
DR_HELD_OUT = DRConfig(
    friction=((0.4, 0.6), (1.4, 1.8)),
    body_mass=((0.75, 0.85), (1.15, 1.3)),
    joint_damping=((0.5, 0.7), (1.3, 1.6)),
    actuator_gain=((0.75, 0.85), (1.15, 1.3)),
    obs_noise=held_out_noise(_TRAIN_NOISE),
    action_delay=(2,),
)


# An arm's encoders, std in each field's units: joint angles to 2 mrad (about a 12-bit
# encoder's step), velocities 0.03 rad/s, a tool position computed from them 2 mm.
ENCODER_NOISE: dict[str, Ranges] = {
    "joint_pos": ((0.0, 0.002),),
    "joint_vel": ((0.0, 0.03),),
    "site_pos": ((0.0, 0.002),),
}

# The shared ranges with `ENCODER_NOISE` for the fields it names (held out: `held_out_noise`);
# other fields keep the shared noise.
DR_TRAIN_ENCODERS = dataclasses.replace(DR_TRAIN, obs_noise={**DR_TRAIN.obs_noise, **ENCODER_NOISE})
DR_HELD_OUT_ENCODERS = dataclasses.replace(
    DR_HELD_OUT, obs_noise={**DR_HELD_OUT.obs_noise, **held_out_noise(ENCODER_NOISE)}
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
    `OBSERVATION_FIELDS` in the order the policy sees them; `obs_site`, `obs_body`,
    `obs_joints` and `obs_body_pair` name what the fields that need them read. `control_hz` must
    divide the model's physics rate (substeps = 1 / (control_hz * timestep)).

    `action_lowpass` in (0, 1]: the first-order low-pass each command goes through before the
    action delay (`crl.core.spec.ActionSpec.lowpass`, which the runtime applies the same way);
    1 is none. `goal_ramp`: control steps over which each evaluation episode's commands ramp in
    from the command that held its start pose (`ActionSpec.goal_ramp`: the runtime ramps in the
    commands after each new goal the same way; training episodes do not); 0 is none.

    `healthy_z_range` (low, high), for robots that can fall: an episode ends early (terminates)
    after a step that leaves the world z of `base_body` outside [low, high], as the paper's envs
    end a fallen or launched robot's episode instead of recording it lying there until
    `episode_length`. None: the robot cannot fall and every episode runs its full length.
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
    obs_body: str = ""
    obs_joints: tuple[str, ...] = ()
    obs_body_pair: tuple[str, ...] = ()
    healthy_z_range: Range | None = None
    action_lowpass: float = 1.0
    goal_ramp: int = 0
    start: StartSampler = field(default_factory=StartSampler)
    dr_train: DRConfig = DR_TRAIN
    dr_held_out: DRConfig = DR_HELD_OUT

    def __post_init__(self) -> None:
        # In this order: the first field that cannot work is the one named.
        self._check_model()
        self._check_goal()
        self._check_observation()
        self._check_base_body()
        self._check_name_lists()
        self._check_episode()
        self._check_dr()

    def _check_model(self) -> None:
        if not self.name:
            raise ConfigError("TaskConfig.name: empty")
        if not self.model_file:
            raise ConfigError("TaskConfig.model_file: empty; name an MJCF file in sim/assets/")

    def _check_goal(self) -> None:
        """What is tracked, on which axes and frame, and a sampler drawing that many coordinates."""
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

    def _check_observation(self) -> None:
        """Known fields, each with the field it reads (`ObservationField.needs`) set."""
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

    def _check_base_body(self) -> None:
        """A base placed at the start or bounded in height is named; the band is a tuple."""
        if self.start.base_xy is not None and not self.base_body:
            raise ConfigError("TaskConfig.base_body: start.base_xy places the base; name it")
        if self.healthy_z_range is None:
            return
        band = self.healthy_z_range
        if isinstance(band, list):  # read back from JSON
            band = tuple(band)
            object.__setattr__(self, "healthy_z_range", band)
        if not (isinstance(band, tuple) and len(band) == 2):
            raise ConfigError(
                f"TaskConfig.healthy_z_range: expected a (low, high) tuple, got {band!r}"
            )
        low, high = _floats(band, "TaskConfig.healthy_z_range")
        if low >= high:
            raise ConfigError(f"TaskConfig.healthy_z_range: low {low} >= high {high}")
        if not self.base_body:
            raise ConfigError(
                "TaskConfig.base_body: healthy_z_range bounds the base's height; name it"
            )

    def _check_name_lists(self) -> None:
        """No name listed twice; a body pair is two bodies."""
        if len(set(self.observation)) != len(self.observation):
            raise ConfigError(f"TaskConfig.observation: duplicate fields in {self.observation}")
        if self.obs_body_pair and len(self.obs_body_pair) != 2:
            raise ConfigError(
                f"TaskConfig.obs_body_pair: name two bodies, got {self.obs_body_pair!r}"
            )
        if len(set(self.obs_joints)) != len(self.obs_joints):
            raise ConfigError(f"TaskConfig.obs_joints: duplicates in {self.obs_joints}")
        if len(set(self.actuated_joints)) != len(self.actuated_joints):
            raise ConfigError(f"TaskConfig.actuated_joints: duplicates in {self.actuated_joints}")

    def _check_episode(self) -> None:
        """The control rate, the command filter and ramp, the episode's length and the success
        radius."""
        if not (math.isfinite(self.control_hz) and self.control_hz > 0):
            raise ConfigError(f"TaskConfig.control_hz: must be positive, got {self.control_hz}")
        if not 0.0 < self.action_lowpass <= 1.0:
            raise ConfigError(f"TaskConfig.action_lowpass: must be in (0, 1] (1: no filter), "
                              f"got {self.action_lowpass}")
        n = self.episode_length
        if not isinstance(n, int) or isinstance(n, bool) or n <= 0:
            raise ConfigError(f"TaskConfig.episode_length: must be a positive int, got {n!r}")
        if not (math.isfinite(self.success_radius) and self.success_radius > 0):
            raise ConfigError(
                f"TaskConfig.success_radius: must be positive, got {self.success_radius}"
            )
        ramp, most = self.goal_ramp, min(n, math.floor(MAX_GOAL_RAMP_S * self.control_hz))
        if not isinstance(ramp, int) or isinstance(ramp, bool) or not 0 <= ramp <= most:
            raise ConfigError(f"TaskConfig.goal_ramp: must be an int of control steps from 0 "
                              f"(none) to {most} (the episode's length and {MAX_GOAL_RAMP_S:g} s, "
                              f"the spec's most), got {ramp!r}")

    def _check_dr(self) -> None:
        """A held-out evaluation claims unseen dynamics: no held-out draw may be a training one."""
        for name in ("dr_train", "dr_held_out"):
            if not isinstance(getattr(self, name), DRConfig):
                raise ConfigError(f"TaskConfig.{name}: expected a DRConfig")
        sensed = [n for n in self.observation if OBSERVATION_FIELDS[n].sensed]
        shared = self.dr_held_out.shared_conditions(self.dr_train, sensed)
        if shared:
            raise ConfigError(
                f"TaskConfig.dr_held_out: {', '.join(shared)} can draw what dr_train draws; "
                "held-out ranges must lie outside the training ranges (not touching them) and "
                "held-out delays must differ from the training delays"
            )

    def replace(self, **changes: Any) -> TaskConfig:
        return dataclasses.replace(self, **changes)
