"""The robot config: how a robot's measurements become the policy's observation, and how it is
kept safe. One YAML file per robot (`crl.runtime.robots/<task>.yaml` ships one per task):

    task: reacher
    model: reacher.xml              # the MJCF forward kinematics uses (crl.sim's assets, or a
                                    # path relative to this file); its sha256 must match the spec
    observation:                    # a source for every observation field of the policy's spec
      joint_pos: joint_position     # by joint name (the spec's field names them)
      joint_vel: joint_velocity
      site_pos: {forward_kinematics: fingertip}   # a site's world position from joint angles
      last_action: last_action      # the command the controller sent last, normalized
    command_joints: [shoulder, elbow]   # order of the command array (the robot's controller's)
    safety:
      max_observation_age: 3        # control periods; older → safe action until fresh data
      goal_margin: 0.02             # beyond the training goal box, in the goal's units
      max_action_change: 1.0        # per tick, physical units; null = unlimited
      soft_start: 1.0               # s over which actions ramp in after start and each stop
      safe_action: hold             # hold | zero | default_pose
      default_pose: {shoulder: 0.0, elbow: 0.0}

Loading checks the config against itself; `check_against(spec)` checks it against a policy.
Every error is a one-line `RobotConfigError` naming the key.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

import crl.sim
from crl.sim.spec import PolicySpec

ROBOTS = Path(__file__).parent / "robots"
ASSETS = Path(crl.sim.__file__).parent / "assets"
# Sources that read one value per joint named by the spec field (or by the action's joints).
JOINT_SOURCES = ("joint_position", "joint_velocity")
# Floating-base sources, from the robot's odometry, and their sizes.
BASE_SOURCES = {"base_position": 3, "base_orientation": 4, "base_linear_velocity": 3,
                "base_angular_velocity": 3, "base_gravity": 3}
SOURCES = (*JOINT_SOURCES, *BASE_SOURCES, "forward_kinematics", "last_action")
SAFE_ACTIONS = ("hold", "zero", "default_pose")


class RobotConfigError(ValueError):
    """A robot config that is malformed or does not fit the policy; the message names the key."""


@dataclass(frozen=True)
class Source:
    """Where one observation field comes from: `kind` (one of SOURCES) and, for
    forward_kinematics, the `site` whose position it computes."""

    kind: str
    site: str = ""


@dataclass(frozen=True)
class Safety:
    max_observation_age: float = 3.0
    goal_margin: float = 0.0
    max_action_change: float | None = None
    soft_start: float = 1.0
    safe_action: str = "hold"
    default_pose: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class RobotConfig:
    task: str
    model: Path | None
    observation: Mapping[str, Source]
    command_joints: tuple[str, ...]
    safety: Safety
    path: Path | None = None

    def model_sha256(self) -> str:
        if self.model is None:
            return ""
        return hashlib.sha256(self.model.read_bytes()).hexdigest()

    def replace_safety(self, **changes: Any) -> RobotConfig:
        """This config with some safety settings overridden (command-line / ROS parameters)."""
        merged = {**self.safety.__dict__, **{k: v for k, v in changes.items() if v is not None}}
        return RobotConfig(self.task, self.model, self.observation, self.command_joints,
                           _safety(merged), self.path)

    def check_against(self, spec: PolicySpec) -> None:
        """Refuse (naming the field) a config that does not provide what the policy needs."""
        where = self.path or "robot config"
        if self.task != spec.task:
            raise RobotConfigError(f"{where}: task {self.task!r}, but the policy was trained "
                                   f"for {spec.task!r}")
        fields = {f.name: f for f in spec.observation}
        missing = [n for n in fields if n not in self.observation]
        if missing:
            raise RobotConfigError(f"{where}: observation: no source for the policy's field(s) "
                                   f"{', '.join(missing)}")
        extra = [n for n in self.observation if n not in fields]
        if extra:
            raise RobotConfigError(f"{where}: observation: field(s) {', '.join(extra)} are not "
                                   f"in the policy's spec ({', '.join(fields)})")
        for name, src in self.observation.items():
            size, f = fields[name].size, fields[name]
            want = {"forward_kinematics": 3, "last_action": spec.act_dim,
                    **BASE_SOURCES}.get(src.kind)
            if src.kind in JOINT_SOURCES:
                want = len(f.names or spec.action.joints)
            if want != size:
                raise RobotConfigError(f"{where}: observation.{name}: source {src.kind} gives "
                                       f"{want} values, the policy's field has {size}")
        if sorted(self.command_joints) != sorted(spec.action.joints):
            raise RobotConfigError(f"{where}: command_joints {list(self.command_joints)} are not "
                                   f"the policy's action joints {list(spec.action.joints)}")
        pose = self.safety.default_pose
        if self.safety.safe_action == "default_pose":
            absent = [j for j in spec.action.joints if j not in pose]
            if absent:
                raise RobotConfigError(f"{where}: safety.default_pose: no value for joint(s) "
                                       f"{', '.join(absent)}")
        if self.safety.safe_action == "hold" and spec.action.kind == "effort":
            raise RobotConfigError(f"{where}: safety.safe_action: 'hold' would keep applying the "
                                   "last torque; an effort-controlled robot needs 'zero' (or "
                                   "'default_pose' torques)")
        needs_model = any(s.kind == "forward_kinematics" for s in self.observation.values())
        if needs_model:
            if self.model is None:
                raise RobotConfigError(f"{where}: model: forward_kinematics needs the robot's "
                                       "MJCF; name it")
            sha = self.model_sha256()
            if sha != spec.provenance.robot_model_sha256:
                raise RobotConfigError(
                    f"{where}: model {self.model}: sha256 {sha[:16]}… differs from the policy's "
                    f"robot_model_sha256 {spec.provenance.robot_model_sha256[:16]}…: the policy "
                    "was trained on another model; use the MJCF it was trained with"
                )


def resolve(name_or_path: str | Path) -> Path:
    """A shipped config by task name (`reacher`), or a path to a YAML file."""
    text = str(name_or_path)
    path = Path(text)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise RobotConfigError(f"robot config {path}: no such file")
        return path
    shipped = ROBOTS / f"{text}.yaml"
    if not shipped.is_file():
        names = ", ".join(sorted(p.stem for p in ROBOTS.glob("*.yaml")))
        raise RobotConfigError(f"robot config {text!r}: not a file and not a shipped config "
                               f"({names})")
    return shipped


def shipped(task: str) -> Path:
    return resolve(task)


def load(name_or_path: str | Path) -> RobotConfig:
    """Read and check a robot config (see the module docstring for the format)."""
    path = resolve(name_or_path)
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise RobotConfigError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    return parse(data, path)


def parse(data: Any, path: Path | None = None) -> RobotConfig:
    where = path or "robot config"
    if not isinstance(data, dict):
        raise RobotConfigError(f"{where}: expected a mapping at the top level")
    known = {"task", "model", "observation", "command_joints", "safety"}
    unknown = set(data) - known
    if unknown:
        raise RobotConfigError(f"{where}: unknown key(s) {sorted(unknown)}; known: "
                               f"{sorted(known)}")
    task = data.get("task")
    if not isinstance(task, str) or not task:
        raise RobotConfigError(f"{where}: task: name the task the policy was trained on")
    model = None
    if data.get("model") is not None:
        m = Path(str(data["model"]))
        candidates = [m] if m.is_absolute() else [
            *([path.parent / m] if path else []), ASSETS / m]
        model = next((c for c in candidates if c.is_file()), None)
        if model is None:
            raise RobotConfigError(f"{where}: model: {m} not found (looked in "
                                   f"{', '.join(str(c.parent) for c in candidates)})")
    obs = data.get("observation")
    if not isinstance(obs, dict) or not obs:
        raise RobotConfigError(f"{where}: observation: map each policy field to a source "
                               f"({', '.join(SOURCES)})")
    observation = {str(k): _source(v, f"{where}: observation.{k}") for k, v in obs.items()}
    joints = data.get("command_joints")
    if not isinstance(joints, list) or not joints or not all(
        isinstance(j, str) and j for j in joints
    ):
        raise RobotConfigError(f"{where}: command_joints: list the joints of the command array "
                               "in the robot controller's order")
    if len(set(joints)) != len(joints):
        raise RobotConfigError(f"{where}: command_joints: duplicate names in {joints}")
    safety = data.get("safety", {}) or {}
    if not isinstance(safety, dict):
        raise RobotConfigError(f"{where}: safety: expected a mapping")
    try:
        return RobotConfig(task, model, observation, tuple(joints), _safety(safety), path)
    except RobotConfigError as e:
        raise RobotConfigError(f"{where}: {e}") from None


def _source(value: Any, where: str) -> Source:
    if isinstance(value, str):
        if value == "forward_kinematics":
            raise RobotConfigError(f"{where}: forward_kinematics needs a site: "
                                   "{forward_kinematics: SITE}")
        if value not in SOURCES:
            raise RobotConfigError(f"{where}: unknown source {value!r}; one of "
                                   f"{', '.join(SOURCES)}")
        return Source(value)
    if isinstance(value, dict) and set(value) == {"forward_kinematics"}:
        site = value["forward_kinematics"]
        if not isinstance(site, str) or not site:
            raise RobotConfigError(f"{where}: forward_kinematics: name a site of the model")
        return Source("forward_kinematics", site)
    raise RobotConfigError(f"{where}: expected a source name or {{forward_kinematics: SITE}}, "
                           f"got {value!r}")


def _number(value: Any, name: str, *, positive: bool = False, minimum: float = 0.0) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        raise RobotConfigError(f"safety.{name}: expected a finite number, got {value!r}")
    if value < minimum or (positive and value <= 0):
        raise RobotConfigError(f"safety.{name}: must be {'>' if positive else '>='} {minimum}, "
                               f"got {value}")
    return float(value)


def _safety(data: Mapping[str, Any]) -> Safety:
    known = set(Safety.__dataclass_fields__)
    unknown = set(data) - known
    if unknown:
        raise RobotConfigError(f"safety: unknown key(s) {sorted(unknown)}; known: {sorted(known)}")
    d = Safety()
    age = _number(data.get("max_observation_age", d.max_observation_age), "max_observation_age",
                  positive=True)
    margin = _number(data.get("goal_margin", d.goal_margin), "goal_margin")
    change = data.get("max_action_change", d.max_action_change)
    if change is not None:
        change = _number(change, "max_action_change", positive=True)
    soft = _number(data.get("soft_start", d.soft_start), "soft_start")
    safe = data.get("safe_action", d.safe_action)
    if safe not in SAFE_ACTIONS:
        raise RobotConfigError(f"safety.safe_action: {safe!r} is not one of {SAFE_ACTIONS}")
    pose = data.get("default_pose", {}) or {}
    if not isinstance(pose, dict):
        raise RobotConfigError("safety.default_pose: expected a mapping joint → value")
    pose = {str(k): _number(v, f"default_pose.{k}", minimum=-math.inf) for k, v in pose.items()}
    if safe == "default_pose" and not pose:
        raise RobotConfigError("safety.default_pose: safe_action default_pose needs it")
    return Safety(age, margin, change, soft, safe, pose)
