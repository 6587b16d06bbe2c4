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
    command_interface: forward      # the ROS node's ros2_control controller: forward (a forward
                                    # command controller) | trajectory (joint_trajectory_controller)
    safety:
      max_observation_age: 3        # control periods; older → safe action until fresh data
      goal_margin: 0.02             # beyond the training goal box, in the goal's units
      max_action_change: 1.0        # per tick, physical units; null = unlimited
      soft_start: 1.0               # s over which actions ramp in after start and each stop
      max_joint_speed: null         # units/s; a commanded joint measured moving faster was moved
                                    # outside the controller (a reset): handled as a restart
      safe_action: hold             # hold | zero | default_pose
      default_pose: {shoulder: 0.0, elbow: 0.0}

Loading checks the config against itself; `check_against(spec)` checks it against a policy
(a `default_pose` inside the policy's action limits and the model's joint ranges). Every error
is a one-line `RobotConfigError` naming the key, of bounded length whatever the input: the file
is read up to MAX_CONFIG_BYTES, YAML anchors and aliases (which can expand a few hundred bytes
into gigabytes) are refused, and quoted values are cut to MAX_QUOTED_CHARS.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

import crl.sim
from crl.core.reading import RefusedFileError, read_limited
from crl.core.spec import PolicySpec
from crl.runtime.messages import bounded

ROBOTS = Path(__file__).parent / "robots"
ASSETS = Path(crl.sim.__file__).parent / "assets"
# Sources that read one value per joint named by the spec field (or by the action's joints).
JOINT_SOURCES = ("joint_position", "joint_velocity")
# Floating-base sources, from the robot's odometry, and their sizes.
BASE_SOURCES = {"base_position": 3, "base_orientation": 4, "base_linear_velocity": 3,
                "base_angular_velocity": 3, "base_gravity": 3}
SOURCES = (*JOINT_SOURCES, *BASE_SOURCES, "forward_kinematics", "last_action")
SAFE_ACTIONS = ("hold", "zero", "default_pose")
# How a ROS robot takes the commands (crl_runtime's goal_reach; the ZMQ transport ignores it):
# a ros2_control forward command controller (a Float64MultiArray in command_joints order, position
# targets or torques) or a joint_trajectory_controller (a one-point JointTrajectory, position
# targets only).
COMMAND_INTERFACES = ("forward", "trajectory")
# A robot config is a hand-written page (the shipped ones are under 1 KiB): more is not a config.
MAX_CONFIG_BYTES = 64 * 1024
# Mappings and lists nested deeper than a config's own (safety.default_pose.<joint> is 3) are
# refused before the YAML composer recurses into them.
MAX_NESTING = 8
# Beyond this many control periods without a fresh observation the policy acts blind, not on
# slightly old data (2 s at 25 Hz, 0.1 s at 500 Hz); a larger staleness limit is a typo.
MAX_OBSERVATION_AGE_PERIODS = 50.0
# Any error message, and any value quoted in one (a name, a key, a list read from the file).
MAX_ERROR_CHARS = 1000
MAX_QUOTED_CHARS = 80


def quote(value: Any) -> str:
    """`repr(value)` for a message, bounded (see `bounded`)."""
    return bounded(repr(value), MAX_QUOTED_CHARS)


class RobotConfigError(ValueError):
    """A robot config that is malformed or does not fit the policy; the message names the key
    and is one line of at most MAX_ERROR_CHARS."""

    def __init__(self, message: str) -> None:
        super().__init__(bounded(message, MAX_ERROR_CHARS))


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
    max_joint_speed: float | None = None


@dataclass(frozen=True)
class RobotConfig:
    task: str
    model: Path | None
    observation: Mapping[str, Source]
    command_joints: tuple[str, ...]
    safety: Safety
    path: Path | None = None
    command_interface: str = "forward"

    def model_sha256(self) -> str:
        if self.model is None:
            return ""
        return hashlib.sha256(self.model.read_bytes()).hexdigest()

    def replace_safety(self, **changes: Any) -> RobotConfig:
        """This config with some safety settings overridden (command-line / ROS parameters)."""
        merged = {**self.safety.__dict__, **{k: v for k, v in changes.items() if v is not None}}
        return dataclasses.replace(self, safety=_safety(merged))

    def check_against(self, spec: PolicySpec) -> None:
        """Refuse (naming the field) a config that does not provide what the policy needs."""
        where = self.path or "robot config"
        if self.task != spec.task:
            raise RobotConfigError(f"{where}: task {quote(self.task)}, but the policy was "
                                   f"trained for {spec.task!r}")
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
        if self.command_interface == "trajectory" and spec.action.kind != "position":
            raise RobotConfigError(f"{where}: command_interface: "
                                   f"{trajectory_refusal(spec.action.kind)}")
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
        self._check_pose_limits(spec)

    def _check_pose_limits(self, spec: PolicySpec) -> None:
        """Refuse a default pose the robot would not be sent as written: a joint the policy
        does not command, a value outside the policy's action limits (the controller clips
        commands to them) or, for joint position targets, outside the model's joint range."""
        where = self.path or "robot config"
        pose, action = self.safety.default_pose, spec.action
        unknown = [j for j in pose if j not in action.joints]
        if unknown:
            raise RobotConfigError(f"{where}: safety.default_pose: joint(s) {quote(unknown)} "
                                   f"are not the policy's action joints {list(action.joints)}")
        units = "rad" if action.kind == "position" else "N·m"
        for j, value in pose.items():
            i = action.joints.index(j)
            if not action.low[i] <= value <= action.high[i]:
                raise RobotConfigError(
                    f"{where}: safety.default_pose.{j}: {value:g} {units} is outside the "
                    f"policy's action limits [{action.low[i]:g}, {action.high[i]:g}]")
        if action.kind != "position" or self.model is None or not pose:
            return
        import mujoco  # only a config with a default pose and a model pays for loading it

        try:
            model = mujoco.MjModel.from_xml_path(str(self.model))
        except ValueError as e:  # MuJoCo's parse and compile errors
            raise RobotConfigError(f"{where}: model {self.model}: {e}") from None
        for j, value in pose.items():
            jid = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_JOINT, j)
            if jid < 0 or not model.jnt_limited[jid]:
                continue
            low, high = (float(x) for x in model.jnt_range[jid])
            if not low <= value <= high:
                raise RobotConfigError(
                    f"{where}: safety.default_pose.{j}: {value:g} rad is outside the joint's "
                    f"range [{low:g}, {high:g}] in {self.model.name}")


def trajectory_refusal(kind: str) -> str:
    """Why a policy of this action kind cannot command a joint_trajectory_controller."""
    return (f"'trajectory' sends position targets to a joint_trajectory_controller, but this "
            f"policy commands {kind} (N·m); use 'forward' (a forward_effort_controller)")


def resolve(name_or_path: str | Path) -> Path:
    """A shipped config by task name (`reacher`), or a path to a YAML file."""
    text = str(name_or_path)
    path = Path(text)
    if path.suffix in (".yaml", ".yml") or _is_file(path):
        if not _is_file(path):
            raise RobotConfigError(f"robot config {quote(text)}: no such file")
        return path
    shipped = ROBOTS / f"{text}.yaml"
    if not _is_file(shipped):
        names = ", ".join(sorted(p.stem for p in ROBOTS.glob("*.yaml")))
        raise RobotConfigError(f"robot config {quote(text)}: not a file and not a shipped "
                               f"config ({names})")
    return shipped


def _is_file(path: Path) -> bool:
    """Path.is_file, False (not an exception) for a name too long or with a NUL byte."""
    try:
        return path.is_file()
    except (OSError, ValueError):
        return False


def shipped(task: str) -> Path:
    return resolve(task)


def load(name_or_path: str | Path) -> RobotConfig:
    """Read and check a robot config (see the module docstring for the format)."""
    path = resolve(name_or_path)
    return parse(read_yaml(path), path)


def read_yaml(path: Path) -> Any:
    """A robot's YAML file, parsed with the robot config's limits (size, UTF-8, no anchors or
    aliases, nesting); errors are one-line RobotConfigErrors. The ROS launch reads its robot
    files through this too."""
    try:
        raw = read_limited(path, MAX_CONFIG_BYTES)
    except OSError as e:
        raise RobotConfigError(f"{path}: cannot read it ({e.strerror})") from None
    except RefusedFileError as e:
        raise RobotConfigError(f"{path}: cannot read it ({e}); a robot config is a short "
                               "hand-written file") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise RobotConfigError(f"{path}: not UTF-8 text (byte {e.start})") from None
    return load_yaml(text, path)


class _ConfigLoader(yaml.SafeLoader):
    """PyYAML's safe loader without anchors and aliases (a few hundred bytes of them expand
    into gigabytes: the "billion laughs") and with at most MAX_NESTING levels (its composer
    recurses once a level)."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.nesting = 0

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        event = self.peek_event()  # type: ignore[no-untyped-call]  # untyped in types-PyYAML
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None):
            raise _RefusedYAMLError(event.start_mark, "anchors and aliases (&name, *name) are "
                                    "not allowed in a robot config; write the values out")
        nests = isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent))
        if nests and self.nesting >= MAX_NESTING:
            raise _RefusedYAMLError(event.start_mark, f"nested deeper than {MAX_NESTING} levels")
        self.nesting += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self.nesting -= 1


class _RefusedYAMLError(Exception):
    """YAML a robot config may not hold, where it starts."""

    def __init__(self, mark: Any, problem: str) -> None:
        super().__init__(f"line {mark.line + 1}, column {mark.column + 1}: {problem}")


def load_yaml(text: str, where: Path | str = "robot config") -> Any:
    """Parse a robot config's YAML (see `_ConfigLoader`); errors are one-line
    RobotConfigErrors."""
    try:
        return yaml.load(text, Loader=_ConfigLoader)
    except _RefusedYAMLError as e:
        raise RobotConfigError(f"{where}: {e}") from None
    except yaml.YAMLError as e:
        problem = getattr(e, "problem", None) or str(e).split("\n", 1)[0]
        mark = getattr(e, "problem_mark", None)
        at = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        raise RobotConfigError(f"{where}: not valid YAML ({at}{problem})") from None


def parse(data: Any, path: Path | None = None) -> RobotConfig:
    where = path or "robot config"
    if not isinstance(data, dict):
        raise RobotConfigError(f"{where}: expected a mapping at the top level")
    known = {"task", "model", "observation", "command_joints", "command_interface", "safety"}
    unknown = set(data) - known
    if unknown:
        raise RobotConfigError(f"{where}: unknown key(s) {quote(sorted(map(str, unknown)))}; "
                               f"known: {sorted(known)}")
    task = data.get("task")
    if not isinstance(task, str) or not task:
        raise RobotConfigError(f"{where}: task: name the task the policy was trained on")
    model = None
    if data.get("model") is not None:
        m = Path(str(data["model"]))
        candidates = [m] if m.is_absolute() else [
            *([path.parent / m] if path else []), ASSETS / m]
        model = next((c for c in candidates if _is_file(c)), None)
        if model is None:
            raise RobotConfigError(f"{where}: model: {quote(str(m))} not found (looked in "
                                   f"{', '.join(quote(str(c.parent)) for c in candidates)})")
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
        raise RobotConfigError(f"{where}: command_joints: duplicate names in {quote(joints)}")
    interface = data.get("command_interface", "forward")
    if interface not in COMMAND_INTERFACES:
        raise RobotConfigError(f"{where}: command_interface: {quote(interface)} is not one of "
                               f"{', '.join(COMMAND_INTERFACES)}")
    safety = data.get("safety", {}) or {}
    if not isinstance(safety, dict):
        raise RobotConfigError(f"{where}: safety: expected a mapping")
    try:
        checked = _safety(safety)
    except RobotConfigError as e:
        raise RobotConfigError(f"{where}: {e}") from None
    unknown_joints = [j for j in checked.default_pose if j not in joints]
    if unknown_joints:
        raise RobotConfigError(f"{where}: safety.default_pose: joint(s) "
                               f"{quote(unknown_joints)} are not in command_joints "
                               f"{quote(joints)}")
    return RobotConfig(task, model, observation, tuple(joints), checked, path, interface)


def _source(value: Any, where: str) -> Source:
    if isinstance(value, str):
        if value == "forward_kinematics":
            raise RobotConfigError(f"{where}: forward_kinematics needs a site: "
                                   "{forward_kinematics: SITE}")
        if value not in SOURCES:
            raise RobotConfigError(f"{where}: unknown source {quote(value)}; one of "
                                   f"{', '.join(SOURCES)}")
        return Source(value)
    if isinstance(value, dict) and set(value) == {"forward_kinematics"}:
        site = value["forward_kinematics"]
        if not isinstance(site, str) or not site:
            raise RobotConfigError(f"{where}: forward_kinematics: name a site of the model")
        return Source("forward_kinematics", site)
    raise RobotConfigError(f"{where}: expected a source name or {{forward_kinematics: SITE}}, "
                           f"got {quote(value)}")


def _number(value: Any, name: str, *, positive: bool = False, minimum: float = 0.0,
            maximum: float = math.inf) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        raise RobotConfigError(f"safety.{name}: expected a finite number, got {quote(value)}")
    if value < minimum or (positive and value <= 0):
        raise RobotConfigError(f"safety.{name}: must be {'>' if positive else '>='} {minimum}, "
                               f"got {value:g}")
    if value > maximum:
        raise RobotConfigError(f"safety.{name}: must be <= {maximum:g}, got {value:g}")
    return float(value)


def _safety(data: Mapping[str, Any]) -> Safety:
    known = set(Safety.__dataclass_fields__)
    unknown = set(data) - known
    if unknown:
        raise RobotConfigError(f"safety: unknown key(s) {quote(sorted(map(str, unknown)))}; "
                               f"known: {sorted(known)}")
    d = Safety()
    age = _number(data.get("max_observation_age", d.max_observation_age), "max_observation_age",
                  positive=True, maximum=MAX_OBSERVATION_AGE_PERIODS)
    margin = _number(data.get("goal_margin", d.goal_margin), "goal_margin")
    change = _limit(data, "max_action_change")
    soft = _number(data.get("soft_start", d.soft_start), "soft_start")
    safe = data.get("safe_action", d.safe_action)
    if safe not in SAFE_ACTIONS:
        raise RobotConfigError(f"safety.safe_action: {quote(safe)} is not one of {SAFE_ACTIONS}")
    pose = data.get("default_pose", {}) or {}
    if not isinstance(pose, dict):
        raise RobotConfigError("safety.default_pose: expected a mapping joint → value")
    pose = {str(k): _number(v, f"default_pose.{k}", minimum=-math.inf) for k, v in pose.items()}
    if safe == "default_pose" and not pose:
        raise RobotConfigError("safety.default_pose: safe_action default_pose needs it")
    return Safety(age, margin, change, soft, safe, pose, _limit(data, "max_joint_speed"))


def _limit(data: Mapping[str, Any], name: str) -> float | None:
    """An optional positive safety limit: absent or null is none (off)."""
    value = data.get(name)
    return None if value is None else _number(value, name, positive=True)
