"""The runtime's wire format: versioned msgpack maps with an explicit schema per kind.

Every message carries `v` (the format version), `kind`, `session` (a random id per sender process),
`seq` (increasing within a session) and `stamp` (the sender's wall clock, `time.time()`, in
seconds, like a ROS header stamp). The decoder trusts nothing: it refuses oversized input before
parsing, parses with msgpack's own container limits and no extension types (no pickle, no eval),
checks every field's type and size, and refuses non-finite numbers. Each refusal is a
`MessageError` whose `reason` is one of `REASONS`, so a transport can count what it dropped;
its text is bounded (`MAX_DETAIL_CHARS`) whatever the input, so it always fits a reply.

Order (`SequenceGuard`, one per input stream): a receiver takes a message only if
- on a stream of many senders (goals), its stamp is at most `FUTURE_TOLERANCE_S` ahead of the
  receiver's clock (else "future": their stamps order them, so clocks must agree that closely,
  e.g. by NTP; a future stamp never moves what the receiver remembers, and a stamp within the
  tolerance is remembered as the receiver's time). A stream of one sender (a robot's
  observations, the runtime's actions) is ordered by seq alone: its sender's clock may be off by
  any amount (a robot booted without a clock battery, one set back), and how old its data is
  comes from the stamps against the receiver's clock with the offset taken out
  (`crl.runtime.stamps`);
- from the session it follows: its seq is higher than the last taken (else "out_of_order");
- from another session (a restarted or second sender), on a stream with one sender (a robot's
  observations, the runtime's actions: `follow_live=True`): only once the followed session has
  sent nothing taken for `SESSION_QUIET_S`, whatever its stamp, so a second sender (a spoof, a
  stale process still running) cannot displace a robot that is still sending, and a sender
  restarted with a clock that stepped back is taken once its old self is silent;
- from another session on a stream of many senders (goals, one session per `crl-run goal`): its
  stamp is newer than the last taken message's, or the followed session has been silent for
  `SESSION_QUIET_S` (a restarted sender whose clock stepped back).
Old stamps then read as stale data downstream.
A receiver that validates further (a goal against the policy's box) remembers a message only
once it is accepted: a refused message moves nothing.

    encode(Observation(...)) -> bytes
    decode(data, Observation) -> Observation     # or MessageError
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, fields
from typing import Any, ClassVar, TypeVar

import msgpack
import numpy as np
from numpy.typing import NDArray

VERSION = 1
MAX_MESSAGE_BYTES = 64 * 1024  # a 100-joint observation is ~4 kB; anything near this is wrong
MAX_ITEMS = 512  # the longest list any field may hold (joint names, values)
REASONS = ("oversized", "malformed", "schema", "size", "nonfinite", "out_of_order", "future",
           "multipart", "internal")
MAX_DETAIL_CHARS = 200  # a refusal's text: enough to name the field, never the whole input
FUTURE_TOLERANCE_S = 0.5  # how far a stamp may lead the receiver's clock (clock disagreement)
SESSION_QUIET_S = 0.5  # silence after which another session (a restarted sender) is followed

Vector = NDArray[np.float64]


class MessageError(ValueError):
    """A message the decoder refused; `reason` (one of REASONS) is what a transport counts."""

    def __init__(self, reason: str, detail: str):
        super().__init__(bounded(f"{reason}: {detail}"))
        self.reason = reason


def bounded(text: str, limit: int = MAX_DETAIL_CHARS) -> str:
    """`text` on one line (whitespace runs, newlines included, become one space) and at most
    `limit` characters, cut ones ending in how long it was: text built from input (a refusal, a
    config error) must neither break a log line nor flood it, nor outgrow a reply."""
    line = " ".join(text.split())
    if len(line) <= limit:
        return line
    suffix = f"… ({len(line)} characters)"
    return line[:max(0, limit - len(suffix))] + suffix


def new_session() -> int:
    """A random id for this sender process, so a restarted sender's seq 0 is not 'old'."""
    return int.from_bytes(os.urandom(8), "little") >> 1


@dataclass(frozen=True)
class Header:
    """The envelope every message has."""

    session: int
    seq: int
    stamp: float


@dataclass(frozen=True)
class Observation(Header):
    """What the robot measured: joint states by name (any order; extras allowed) and, for a
    floating-base robot, base pose (world) and twist (base frame, as in ROS Odometry)."""

    KIND: ClassVar[str] = "observation"
    joint_names: tuple[str, ...]
    joint_pos: Vector
    joint_vel: Vector
    base_pos: Vector | None = None
    base_quat: Vector | None = None  # w, x, y, z
    base_lin_vel: Vector | None = None
    base_ang_vel: Vector | None = None


@dataclass(frozen=True)
class Action(Header):
    """A command for the robot's joints in physical units (rad targets or N·m); `safe` marks the
    safe action rather than the policy's. `obs_seq`/`obs_stamp` name the observation it answers
    (-1 / 0.0 when none), so the robot measures end-to-end latency on its own clock. A robot
    applies only actions that answer one of its own observations (`obs_stamp` no older than its
    first): after it restarts, what the runtime sent its previous self (a hold, a target) is for
    another pose, and the runtime re-reads the pose from the new robot's first observation."""

    KIND: ClassVar[str] = "action"
    joints: tuple[str, ...]
    values: Vector
    command: str
    safe: bool
    obs_seq: int
    obs_stamp: float


@dataclass(frozen=True)
class Goal(Header):
    """A commanded goal: values in `frame` (the policy's spec says which frame it accepts)."""

    KIND: ClassVar[str] = "goal"
    frame: str
    values: Vector


@dataclass(frozen=True)
class GoalReply(Header):
    """The runtime's answer to a goal: accepted, or the reason it kept the previous goal."""

    KIND: ClassVar[str] = "goal_reply"
    accepted: bool
    reason: str


@dataclass(frozen=True)
class Telemetry(Header):
    """What a simulated robot knows and a real one does not: the true (noise-free) achieved goal
    and the episode's sampled goal, for scoring a closed loop. Never fed to a policy."""

    KIND: ClassVar[str] = "telemetry"
    episode: int
    step: int
    episode_length: int
    goal: Vector
    achieved_goal: Vector
    action_latency_ms: float  # the newest action: its observation's measurement → received
    action_applied_ms: float  # → it took effect in the physics (after the robot's own delay)
    actions_received: int
    command: Vector  # the newest command the robot took (physical units, its action joints)


@dataclass(frozen=True)
class Status(Header):
    """The runtime's statistics (`Stats.to_dict()` of crl.runtime.controller), a flat map."""

    KIND: ClassVar[str] = "status"
    stats: dict[str, Any]


Message = Observation | Action | Goal | GoalReply | Telemetry | Status
M = TypeVar("M", Observation, Action, Goal, GoalReply, Telemetry, Status)

# The schema: field → (type, vector size rule). "vec" = list of finite floats; "vec3"/"vec4" fixed.
_SCHEMA: dict[str, dict[str, str]] = {
    "observation": {"joint_names": "names", "joint_pos": "vec", "joint_vel": "vec",
                    "base_pos": "vec3?", "base_quat": "vec4?", "base_lin_vel": "vec3?",
                    "base_ang_vel": "vec3?"},
    "action": {"joints": "names", "values": "vec", "command": "str", "safe": "bool",
               "obs_seq": "int", "obs_stamp": "float"},
    "goal": {"frame": "str", "values": "vec"},
    "goal_reply": {"accepted": "bool", "reason": "str"},
    "telemetry": {"episode": "int", "step": "int", "episode_length": "int", "goal": "vec",
                  "achieved_goal": "vec", "action_latency_ms": "float?nan",
                  "action_applied_ms": "float?nan", "actions_received": "int", "command": "vec"},
    "status": {"stats": "stats"},
}
_HEADER = ("session", "seq", "stamp")


def encode(msg: Message) -> bytes:
    """The msgpack bytes of a message (numpy arrays become lists of floats)."""
    out: dict[str, Any] = {"v": VERSION, "kind": msg.KIND}
    for f in fields(msg):
        value = getattr(msg, f.name)
        if value is None:
            continue
        if isinstance(value, np.ndarray):
            value = [float(x) for x in value.ravel()]
        elif isinstance(value, tuple):
            value = list(value)
        out[f.name] = value
    data: bytes = msgpack.packb(out, use_bin_type=True)
    if len(data) > MAX_MESSAGE_BYTES:
        raise MessageError("oversized", f"{msg.KIND} encodes to {len(data)} bytes, over "
                                        f"{MAX_MESSAGE_BYTES}")
    return data


def _no_ext(code: int, data: bytes) -> Any:
    raise MessageError("malformed", f"msgpack extension type {code} is not allowed")


def decode(data: bytes | bytearray | memoryview, cls: type[M]) -> M:
    """Parse and check one message of kind `cls`; MessageError names what was wrong.

    Text is read as bytes and decoded here (`_text`): msgpack interns every map key it reads as a
    str into the interpreter's table of interned strings, which a stream of messages full of new
    keys would grow and rebuild every few hundred messages, stalling the tick that read one
    (measured: 2-13 ms, once every ~630 goals of 100 unknown keys). As bytes nothing is interned.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise MessageError("malformed", f"expected bytes, got {type(data).__name__}")
    if len(data) > MAX_MESSAGE_BYTES:
        raise MessageError("oversized", f"{len(data)} bytes, over {MAX_MESSAGE_BYTES}")
    try:
        packed = msgpack.unpackb(
            data, raw=True, use_list=True, strict_map_key=True, ext_hook=_no_ext,
            max_str_len=1024, max_bin_len=0, max_array_len=MAX_ITEMS, max_map_len=128,
            max_ext_len=0,
        )
    except MessageError:
        raise
    except Exception as e:  # msgpack raises several unrelated types for bad input
        raise MessageError("malformed", f"not a msgpack message ({type(e).__name__})") from None
    if not isinstance(packed, dict):
        raise MessageError("schema", f"expected a map, got {type(packed).__name__}")
    try:  # strict_map_key admits text keys only, read as bytes; values are decoded by rule
        raw = {k.decode(): v for k, v in packed.items()}
    except UnicodeDecodeError:
        raise MessageError("malformed", "a field name is not UTF-8") from None
    version = raw.get("v")
    if type(version) is not int or version != VERSION:  # not True, not 1.0
        raise MessageError("schema", f"version {_shown(version)}, this runtime reads {VERSION}")
    kind = cls.KIND
    if raw.get("kind") != kind.encode():
        raise MessageError("schema", f"kind {_shown(raw.get('kind'))}, expected {kind!r}")
    schema = _SCHEMA[kind]
    unknown = set(raw) - set(schema) - set(_HEADER) - {"v", "kind"}
    if unknown:
        named = ", ".join(repr(bounded(k, 32)) for k in sorted(unknown)[:3])
        more = f" and {len(unknown) - 3} more" if len(unknown) > 3 else ""
        raise MessageError("schema", f"{kind}: unknown field(s) {named}{more}")
    values: dict[str, Any] = {
        "session": _int(raw, "session"), "seq": _int(raw, "seq"), "stamp": _float(raw, "stamp"),
    }
    if values["seq"] < 0 or values["session"] < 0:
        raise MessageError("schema", f"{kind}: negative seq or session")
    for name, rule in schema.items():
        values[name] = _field(raw, kind, name, rule)
    check_sizes(kind, values)
    return cls(**values)


def check_sizes(kind: str, values: dict[str, Any]) -> None:
    """The checks across fields: one value per named joint (observation, action)."""
    if kind == "observation":
        n = len(values["joint_names"])
        for name in ("joint_pos", "joint_vel"):
            if len(values[name]) != n:
                raise MessageError("size", f"observation.{name}: {len(values[name])} values for "
                                           f"{n} joint names")
    if kind == "action" and len(values["values"]) != len(values["joints"]):
        raise MessageError("size", f"action.values: {len(values['values'])} values for "
                                   f"{len(values['joints'])} joints")


def _text(value: object, where: str) -> str:
    """Text as read (bytes, see `decode`) as a str; MessageError when it is not text or not
    UTF-8."""
    if not isinstance(value, bytes):
        raise MessageError("schema", f"{where}: expected a string, got {type(value).__name__}")
    try:
        return value.decode()
    except UnicodeDecodeError:
        raise MessageError("malformed", f"{where}: not UTF-8") from None


def _shown(value: object) -> str:
    """A value from the input, short, for a refusal's text (text as text, not as bytes)."""
    if isinstance(value, bytes):
        value = value.decode(errors="replace")
    return bounded(repr(value), 32)


def _int(raw: dict[str, Any], name: str) -> int:
    value = raw.get(name)
    if not isinstance(value, int) or isinstance(value, bool):
        raise MessageError("schema", f"{name}: expected an integer, got {type(value).__name__}")
    return value


def _float(raw: dict[str, Any], name: str, allow_nan: bool = False) -> float:
    value = raw.get(name)
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise MessageError("schema", f"{name}: expected a number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value) and not (allow_nan and math.isnan(value)):
        raise MessageError("nonfinite", f"{name}: {value}")
    return value


def _field(raw: dict[str, Any], kind: str, name: str, rule: str) -> Any:
    optional = rule.endswith("?")
    rule = rule.rstrip("?")
    if name not in raw:
        if optional:
            return None
        raise MessageError("schema", f"{kind}: missing field {name!r}")
    value = raw[name]
    where = f"{kind}.{name}"
    if rule == "str":
        return _text(value, where)
    if rule == "bool":
        if not isinstance(value, bool):
            raise MessageError("schema", f"{where}: expected true/false")
        return value
    if rule == "int":
        return _int(raw, name)
    if rule == "float":
        return _float(raw, name)
    if rule == "float?nan":
        return _float(raw, name, allow_nan=True)
    if rule == "names":
        if not isinstance(value, list) or not all(isinstance(s, bytes) and s for s in value):
            raise MessageError("schema", f"{where}: expected a list of non-empty strings")
        names = tuple(_text(s, where) for s in value)
        if len(set(names)) != len(names):
            raise MessageError("schema", f"{where}: duplicate names")
        return names
    if rule == "stats":
        if not isinstance(value, dict) or not all(
            isinstance(v, (int, float, bytes, bool)) for v in value.values()
        ):
            raise MessageError("schema", f"{where}: expected a flat map of numbers and strings")
        return {_text(k, where): _text(v, where) if isinstance(v, bytes) else v
                for k, v in value.items()}
    # vectors
    if not isinstance(value, list) or not all(
        isinstance(x, (int, float)) and not isinstance(x, bool) for x in value
    ):
        raise MessageError("schema", f"{where}: expected a list of numbers")
    want = {"vec3": 3, "vec4": 4}.get(rule)
    if want is not None and len(value) != want:
        raise MessageError("size", f"{where}: {len(value)} values, expected {want}")
    vec = np.asarray(value, dtype=np.float64)
    if not np.isfinite(vec).all():
        raise MessageError("nonfinite", f"{where}: NaN or inf")
    return vec


class SequenceGuard:
    """Refuses messages out of order, replayed or (from many senders) stamped in the future (the
    module's rules).

    `check` refuses without remembering anything; `record` remembers a message once its receiver
    has taken it, so a message refused later (a goal outside the box) cannot lock out the next.
    `follow_live`: the stream has one sender, followed while it sends (see the module's rules).
    """

    def __init__(self, follow_live: bool = False) -> None:
        self.follow_live = follow_live
        self.session: int | None = None
        self.seq = -1
        self.stamp = -math.inf
        self.taken_at = -math.inf  # monotonic time of the last message recorded

    def check(self, msg: Header) -> None:
        """MessageError ("future" or "out_of_order") when `msg` may not be taken now."""
        lead = msg.stamp - time.time()
        if lead > FUTURE_TOLERANCE_S and not self.follow_live:
            raise MessageError("future", f"stamped {lead:.3g} s ahead of this clock (tolerance "
                                         f"{FUTURE_TOLERANCE_S:g} s)")
        if msg.session == self.session:
            if msg.seq <= self.seq:
                raise MessageError("out_of_order", f"seq {msg.seq} after seq {self.seq}")
        elif time.monotonic() - self.taken_at <= SESSION_QUIET_S:
            if self.follow_live:
                raise MessageError("out_of_order", "another session, while the one followed is "
                                                   "still sending")
            if msg.stamp <= self.stamp:
                raise MessageError("out_of_order", "another session, stamped before the last "
                                                   "message taken from one still sending")

    def record(self, msg: Header) -> None:
        # The stamp is remembered no later than this clock: one ahead within the tolerance must
        # not hold another session out either.
        self.session, self.seq = msg.session, msg.seq
        self.stamp = min(msg.stamp, time.time())
        self.taken_at = time.monotonic()
