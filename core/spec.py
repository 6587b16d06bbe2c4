"""The policy spec: the one contract that crosses every stage of the pipeline.

`sim` writes it (what the env observes, which goal it reaches, what its actions mean), `train`
adds the network shape and provenance, `export` embeds it in the ONNX file, and `runtime` checks
a robot configuration against it before it runs anything. This module is pure Python (dataclasses
and json only) so a robot can read a spec without jax or MuJoCo.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

FORMAT = "crl-policy/1"
ACTION_KINDS = ("position", "effort")


class SpecError(ValueError):
    """A policy spec that cannot be right; the message names the offending field."""


@dataclass(frozen=True)
class Field:
    """One named slice of the observation or goal vector.

    `names` labels each element when that helps a robot fill it (joint names for `joint_pos`);
    it is empty or has exactly `size` entries.
    """

    name: str
    size: int
    meaning: str = ""
    frame: str = ""
    names: tuple[str, ...] = ()


@dataclass(frozen=True)
class GoalSpec:
    """The commanded goal: its fields, the frame they are expressed in, and the box the training
    goal sampler covered (the runtime rejects goals outside it, by a configurable margin)."""

    fields: tuple[Field, ...]
    frame: str
    low: tuple[float, ...]
    high: tuple[float, ...]

    @property
    def size(self) -> int:
        return sum(f.size for f in self.fields)


@dataclass(frozen=True)
class ActionSpec:
    """What the network's output in [-1, 1] means on the robot.

    physical = offset + scale * a, then clipped to [low, high] (joint targets in rad for
    `position`, torques in N·m for `effort`).

    `lowpass`: the command filter the policy was trained behind, a first-order low-pass on the
    physical commands: each command moves this share of the way from the previous command to
    the policy's (command = previous + lowpass · (physical − previous)); 1 is no filter. It is
    part of the robot the policy learned to drive (the env applies it before the action delay;
    the runtime before its safety checks), so a runtime must apply it exactly as trained.

    `goal_ramp`: control steps over which the commands after a new goal ramp in, from the
    command held when it came to the filtered one (command = held + k/goal_ramp · (filtered −
    held) on the k-th step); 0 is none. The env's evaluation episodes ramp in the same way, so
    what an evaluation reports is what the runtime does (its training episodes do not): the
    first, largest move of a reach is what a delay the policy never trained under turns into a
    growing swing about the goal.
    """

    size: int
    joints: tuple[str, ...]
    kind: str
    scale: tuple[float, ...]
    offset: tuple[float, ...]
    low: tuple[float, ...]
    high: tuple[float, ...]
    lowpass: float = 1.0
    goal_ramp: int = 0

    def to_physical(self, normalized: Sequence[float]) -> list[float]:
        """Map a normalized action to physical units and clip it to the limits."""
        if len(normalized) != self.size:
            raise SpecError(
                f"action: got {len(normalized)} values, spec.action.size is {self.size}"
            )
        if not all(math.isfinite(float(a)) for a in normalized):
            raise SpecError(f"action: non-finite value in {list(normalized)}")
        out = []
        for a, s, o, lo, hi in zip(
            normalized, self.scale, self.offset, self.low, self.high, strict=True
        ):
            out.append(min(max(o + s * float(a), lo), hi))
        return out


# Dense → LayerNorm → swish layers per residual block: a network's depth is a multiple of it.
# Written here, in the spec every stage reads, for the trainer's networks and the exporter alike.
BLOCK_LAYERS = 4
# The longest goal ramp a spec may ask for: longer, a robot would barely move towards a new goal.
MAX_GOAL_RAMP_S = 10.0


@dataclass(frozen=True)
class NetworkSpec:
    """Shape of the trained networks (depth counts Dense layers inside residual blocks).

    `depth` and `width` are the actor's, the network an export runs. The critic encoders share
    them unless `critic_depth` / `critic_width` say otherwise (None: the actor's; every spec
    written before they existed); they matter only to a `--critic` export.
    """

    depth: int
    width: int
    repr_dim: int
    residual: bool = True
    critic_depth: int | None = None
    critic_width: int | None = None

    @property
    def critic_shape(self) -> tuple[int, int]:
        """(depth, width) of the critic encoders."""
        return (self.depth if self.critic_depth is None else self.critic_depth,
                self.width if self.critic_width is None else self.critic_width)


@dataclass(frozen=True)
class Provenance:
    """Where a policy came from, so a result on a robot can be traced to its training run."""

    env: str
    robot_model_sha256: str
    train_step: int = 0
    git_commit: str = ""
    domain_randomization: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Store DR ranges in their JSON form (lists, plain floats) so a spec read back from JSON
        # equals the spec that was written.
        object.__setattr__(self, "domain_randomization", _jsonable(self.domain_randomization))


@dataclass(frozen=True)
class PolicySpec:
    """Everything a runtime needs to know to feed a policy and act on its output."""

    task: str
    observation: tuple[Field, ...]
    goal: GoalSpec
    action: ActionSpec
    control_hz: float
    success_radius: float
    provenance: Provenance
    network: NetworkSpec | None = None
    format: str = FORMAT

    def __post_init__(self) -> None:
        validate(self)

    @property
    def obs_dim(self) -> int:
        return sum(f.size for f in self.observation)

    @property
    def goal_dim(self) -> int:
        return self.goal.size

    @property
    def act_dim(self) -> int:
        return self.action.size

    def observation_slices(self) -> dict[str, slice]:
        """Where each named field sits in the observation vector."""
        return _slices(self.observation)

    def goal_slices(self) -> dict[str, slice]:
        return _slices(self.goal.fields)

    def replace(self, **changes: Any) -> PolicySpec:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        if out["network"] is not None:
            # Unset critic sizes are left out: a spec whose actor and critic share their shape
            # reads exactly as it did before they could differ.
            for key in ("critic_depth", "critic_width"):
                if out["network"][key] is None:
                    del out["network"][key]
        return out

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, sort_keys=True)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PolicySpec:
        """Build and validate a spec from its JSON form; errors name the bad field."""
        if not isinstance(data, Mapping):
            raise SpecError(f"spec: expected a JSON object, got {type(data).__name__}")
        fmt = data.get("format")
        if fmt != FORMAT:
            raise SpecError(
                f"spec.format: {fmt!r} is not a format this version reads (expected {FORMAT!r}); "
                "re-export the policy with a matching crl version"
            )
        try:
            goal = data["goal"]
            action = data["action"]
            network = data.get("network")
            prov = data["provenance"]
            return cls(
                format=fmt,
                task=str(data["task"]),
                observation=tuple(_field(f, "observation") for f in data["observation"]),
                goal=GoalSpec(
                    fields=tuple(_field(f, "goal.fields") for f in goal["fields"]),
                    frame=str(goal["frame"]),
                    low=_floats(goal["low"]),
                    high=_floats(goal["high"]),
                ),
                action=ActionSpec(
                    size=int(action["size"]),
                    joints=tuple(str(j) for j in action["joints"]),
                    kind=str(action["kind"]),
                    scale=_floats(action["scale"]),
                    offset=_floats(action["offset"]),
                    low=_floats(action["low"]),
                    high=_floats(action["high"]),
                    lowpass=action.get("lowpass", 1.0),  # 1: a spec from before it
                    goal_ramp=action.get("goal_ramp", 0),  # 0: a spec from before it
                ),
                control_hz=float(data["control_hz"]),
                success_radius=float(data["success_radius"]),
                network=None if network is None else NetworkSpec(
                    depth=int(network["depth"]),
                    width=int(network["width"]),
                    repr_dim=int(network["repr_dim"]),
                    residual=bool(network.get("residual", True)),
                    critic_depth=_optional_int(network.get("critic_depth")),
                    critic_width=_optional_int(network.get("critic_width")),
                ),
                provenance=Provenance(
                    env=str(prov["env"]),
                    robot_model_sha256=str(prov["robot_model_sha256"]),
                    train_step=int(prov.get("train_step", 0)),
                    git_commit=str(prov.get("git_commit", "")),
                    domain_randomization=dict(prov.get("domain_randomization", {})),
                ),
            )
        except KeyError as e:
            raise SpecError(f"spec: missing field {e.args[0]!r}") from None
        except (TypeError, ValueError) as e:
            if isinstance(e, SpecError):
                raise
            raise SpecError(f"spec: malformed value ({e})") from None

    @classmethod
    def from_json(cls, text: str) -> PolicySpec:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise SpecError(f"spec: not valid JSON ({e})") from None
        return cls.from_dict(data)


def validate(spec: PolicySpec) -> None:
    """Raise SpecError naming the first field that cannot be right."""
    if spec.format != FORMAT:
        raise SpecError(f"spec.format: {spec.format!r} is unknown (expected {FORMAT!r})")
    if not spec.task:
        raise SpecError("spec.task: empty")
    if not spec.goal.frame:
        raise SpecError("spec.goal.frame: empty; name the frame goals are expressed in")
    if not spec.provenance.env:
        raise SpecError("spec.provenance.env: empty; name the env the policy was trained in")
    _check_fields(spec.observation, "observation")
    _check_fields(spec.goal.fields, "goal.fields")
    g = spec.goal
    _check_bounds(g.low, g.high, g.size, "goal")
    a = spec.action
    if a.size <= 0:
        raise SpecError(f"spec.action.size: must be positive, got {a.size}")
    if a.kind not in ACTION_KINDS:
        raise SpecError(f"spec.action.kind: {a.kind!r} is not one of {ACTION_KINDS}")
    if len(a.joints) != a.size:
        raise SpecError(f"spec.action.joints: {len(a.joints)} names for action.size {a.size}")
    if not all(a.joints):
        raise SpecError(f"spec.action.joints: an empty joint name in {a.joints}")
    if len(set(a.joints)) != len(a.joints):
        raise SpecError(f"spec.action.joints: duplicate joint names in {a.joints}")
    for name in ("scale", "offset"):
        values = getattr(a, name)
        if len(values) != a.size:
            raise SpecError(f"spec.action.{name}: {len(values)} entries for action.size {a.size}")
        if not all(math.isfinite(v) for v in values):
            raise SpecError(f"spec.action.{name}: non-finite entry in {values}")
    if any(s == 0 for s in a.scale):
        raise SpecError(
            f"spec.action.scale: a zero entry in {a.scale} leaves that joint unactuated"
        )
    _check_bounds(a.low, a.high, a.size, "action")
    if isinstance(a.lowpass, bool) or not (isinstance(a.lowpass, (int, float))
                                            and 0.0 < a.lowpass <= 1.0):
        raise SpecError(f"spec.action.lowpass: must be a number in (0, 1] (1: no filter), got "
                        f"{a.lowpass!r}")
    if not (math.isfinite(spec.control_hz) and spec.control_hz > 0):
        raise SpecError(f"spec.control_hz: must be positive and finite, got {spec.control_hz}")
    most = math.floor(MAX_GOAL_RAMP_S * spec.control_hz)
    if isinstance(a.goal_ramp, bool) or not (isinstance(a.goal_ramp, int)
                                              and 0 <= a.goal_ramp <= most):
        raise SpecError(f"spec.action.goal_ramp: must be an int of control steps from 0 (no ramp) "
                        f"to {most} ({MAX_GOAL_RAMP_S:g} s at {spec.control_hz:g} Hz), got "
                        f"{a.goal_ramp!r}")
    if not (math.isfinite(spec.success_radius) and spec.success_radius > 0):
        raise SpecError(
            f"spec.success_radius: must be positive and finite, got {spec.success_radius}"
        )
    n = spec.network
    if n is not None:
        if n.depth <= 0 or n.depth % 4:
            raise SpecError(f"spec.network.depth: must be a positive multiple of 4, got {n.depth}")
        if n.width <= 0:
            raise SpecError(f"spec.network.width: must be positive, got {n.width}")
        if n.repr_dim <= 0:
            raise SpecError(f"spec.network.repr_dim: must be positive, got {n.repr_dim}")
        if n.critic_depth is not None and (n.critic_depth <= 0 or n.critic_depth % 4):
            raise SpecError("spec.network.critic_depth: must be a positive multiple of 4, got "
                            f"{n.critic_depth}")
        if n.critic_width is not None and n.critic_width <= 0:
            raise SpecError(f"spec.network.critic_width: must be positive, got {n.critic_width}")


def _check_fields(fields: Sequence[Field], where: str) -> None:
    if not fields:
        raise SpecError(f"spec.{where}: no fields")
    seen: set[str] = set()
    for f in fields:
        if not f.name:
            raise SpecError(f"spec.{where}: a field has an empty name")
        if f.name in seen:
            raise SpecError(f"spec.{where}: duplicate field name {f.name!r}")
        seen.add(f.name)
        if not isinstance(f.size, int) or isinstance(f.size, bool):
            raise SpecError(f"spec.{where}.{f.name}.size: must be an integer, got {f.size!r}")
        if f.size <= 0:
            raise SpecError(f"spec.{where}.{f.name}.size: must be positive, got {f.size}")
        if f.names and len(f.names) != f.size:
            raise SpecError(
                f"spec.{where}.{f.name}.names: {len(f.names)} names for size {f.size}"
            )


def _check_bounds(low: Sequence[float], high: Sequence[float], size: int, where: str) -> None:
    for name, values in (("low", low), ("high", high)):
        if len(values) != size:
            raise SpecError(f"spec.{where}.{name}: {len(values)} entries, expected {size}")
        if not all(math.isfinite(v) for v in values):
            raise SpecError(f"spec.{where}.{name}: non-finite entry in {tuple(values)}")
    for i, (lo, hi) in enumerate(zip(low, high, strict=True)):
        if lo > hi:
            raise SpecError(f"spec.{where}: low[{i}]={lo} > high[{i}]={hi} (inverted bounds)")


def _slices(fields: Sequence[Field]) -> dict[str, slice]:
    out, start = {}, 0
    for f in fields:
        out[f.name] = slice(start, start + f.size)
        start += f.size
    return out


def _field(data: Mapping[str, Any], where: str) -> Field:
    try:
        return Field(
            name=str(data["name"]),
            size=int(data["size"]),
            meaning=str(data.get("meaning", "")),
            frame=str(data.get("frame", "")),
            names=tuple(str(n) for n in data.get("names", ())),
        )
    except KeyError as e:
        raise SpecError(f"spec.{where}: a field lacks {e.args[0]!r}") from None


def _optional_int(value: Any) -> int | None:
    return None if value is None else int(value)


def _floats(values: Sequence[Any]) -> tuple[float, ...]:
    return tuple(float(v) for v in values)


def _jsonable(value: Any) -> Any:
    """Tuples and numpy scalars in DR ranges become plain JSON values."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "item"):
        return value.item()
    return value
