"""Would msgspec do for the wire messages? A prototype decoder on msgspec Structs beside
`crl.runtime.messages.decode`, checked for equivalence and timed (issue 24, Build item 7).

The prototype (`decode(data, cls)`, a drop-in: same limits, same `MessageError` reasons, the same
dataclasses back) declares each kind as a `msgspec.Struct` with `forbid_unknown_fields`, the
header's `v` and `kind` as `Literal`s, non-negative `seq`/`session`, and msgpack's parser limits
(string, array and map lengths) as `msgspec.Meta` constraints. What msgspec cannot say is checked
after decoding: finite numbers (it has no such constraint), vec3/vec4 sizes (a wrong size is
"size", not a length constraint), duplicate joint names, and names against values. A message
the typed decode refuses is decoded again the old way, field by field in messages' order
(msgpack's limits on the whole input, envelope, header, fields), so that a message with several
faults gets the same reason: msgspec checks in the order of the input's keys, messages in its
schema's order.

Equivalence: a corpus of valid messages of every kind and hostile inputs (random bytes,
truncations, each field replaced by any msgpack value or removed, unknown fields, strings and
arrays one past their limits, deep nesting, wrong version or kind, negative seq, duplicate and
non-string keys, and pairs of these faults) is decoded by both; every input where they differ in
acceptance, decoded value or refusal reason is a divergence, counted by the faults it carries.
Speed: p50 decode time per message, the two decoders taking turns in rounds so a shared machine's
drift falls on both alike.

    python bench/msgspec_messages.py            # writes bench/results/msgspec_messages_cpu.json
    python bench/msgspec_messages.py --quick    # smoke test, written to /tmp

msgspec is not a crl dependency (it was not adopted): `pip install msgspec` first.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import math
import random
import struct
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Annotated, Any, Literal

import msgpack
import msgspec
import numpy as np
from bench_cli import require_at_least_one, run_cli
from msgspec import UNSET, Meta, Struct, UnsetType

from crl.core.atomic import write_json
from crl.runtime import messages
from crl.runtime.bench import device_info, versions
from crl.runtime.messages import (
    MAX_ITEMS,
    MAX_MESSAGE_BYTES,
    VERSION,
    Action,
    Goal,
    GoalReply,
    MessageError,
    Observation,
    Status,
    Telemetry,
    check_sizes,
    encode,
)

# msgpack's parser limits in messages.decode, restated as field constraints.
MAX_STR_CHARS = 1024
MAX_MAP_ITEMS = 128
MAP_COUNTS = {0xDE: ">H", 0xDF: ">I"}  # msgpack's map16/map32 headers and their entry counts

Text = Annotated[str, Meta(max_length=MAX_STR_CHARS)]
Name = Annotated[str, Meta(min_length=1, max_length=MAX_STR_CHARS)]
Names = Annotated[list[Name], Meta(max_length=MAX_ITEMS)]
Numbers = Annotated[list[float], Meta(max_length=MAX_ITEMS)]
Count = Annotated[int, Meta(ge=0)]
StatValue = int | float | Text | bool
Stats = Annotated[dict[Text, StatValue], Meta(max_length=MAX_MAP_ITEMS)]


class _Wire(Struct, forbid_unknown_fields=True):
    v: Literal[1]
    session: Count
    seq: Count
    stamp: float


class _Observation(_Wire):
    kind: Literal["observation"]
    joint_names: Names
    joint_pos: Numbers
    joint_vel: Numbers
    base_pos: UnsetType | Numbers = UNSET  # absent is allowed, nil is not (as in messages)
    base_quat: UnsetType | Numbers = UNSET
    base_lin_vel: UnsetType | Numbers = UNSET
    base_ang_vel: UnsetType | Numbers = UNSET


class _Action(_Wire):
    kind: Literal["action"]
    joints: Names
    values: Numbers
    command: Text
    safe: bool
    obs_seq: int
    obs_stamp: float


class _Goal(_Wire):
    kind: Literal["goal"]
    frame: Text
    values: Numbers


class _GoalReply(_Wire):
    kind: Literal["goal_reply"]
    accepted: bool
    reason: Text


class _Telemetry(_Wire):
    kind: Literal["telemetry"]
    episode: int
    step: int
    episode_length: int
    goal: Numbers
    achieved_goal: Numbers
    action_latency_ms: float
    action_applied_ms: float
    actions_received: int
    command: Numbers


class _Status(_Wire):
    kind: Literal["status"]
    stats: Stats


WIRE: dict[type[Any], type[_Wire]] = {
    Observation: _Observation, Action: _Action, Goal: _Goal, GoalReply: _GoalReply,
    Telemetry: _Telemetry, Status: _Status,
}
DECODERS = {cls: msgspec.msgpack.Decoder(wire) for cls, wire in WIRE.items()}
FIELDS = {cls: [f for f in msgspec.structs.fields(wire) if f.name not in ("v", "kind")]
          for cls, wire in WIRE.items()}
VECTORS = {cls: {f.name for f in fields(cls) if "Vector" in str(f.type)} for cls in WIRE}
FIXED_SIZES = {"base_pos": 3, "base_quat": 4, "base_lin_vel": 3, "base_ang_vel": 3}
NAN_ALLOWED = {"action_latency_ms", "action_applied_ms"}
HEADER = ("session", "seq", "stamp")


def decode(data: bytes | bytearray | memoryview, cls: type[messages.M]) -> messages.M:
    """messages.decode on msgspec: the same refusals (reasons) and the same dataclasses.

    One typed decode checks every type and limit; what it refuses is decoded again, field by
    field in messages' order, so a message with several faults gets messages' reason."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise MessageError("malformed", f"expected bytes, got {type(data).__name__}")
    if len(data) > MAX_MESSAGE_BYTES:
        raise MessageError("oversized", f"{len(data)} bytes, over {MAX_MESSAGE_BYTES}")
    if data and data[0] in MAP_COUNTS:  # a top-level map over msgpack's limit: msgspec keeps
        # the last of repeated keys, so it would take 129 entries of its 9 names
        count_format = MAP_COUNTS[data[0]]
        if len(data) < 1 + struct.calcsize(count_format):
            raise MessageError("malformed", "not a msgpack message (truncated)")
        count = struct.unpack_from(count_format, data, 1)[0]
        if count > MAX_MAP_ITEMS:
            raise MessageError("malformed", f"a map of {count} entries")
    try:
        wire = DECODERS[cls].decode(data)
    except (msgspec.ValidationError, msgspec.DecodeError) as e:
        raise _refusal(data, cls, e) from None
    values = {f.name: _checked(cls, f.name, getattr(wire, f.name)) for f in FIELDS[cls]}
    check_sizes(cls.KIND, values)
    return cls(**values)


def _checked(cls: type[Any], name: str, value: Any) -> Any:
    """A decoded field as the dataclass holds it, after the checks msgspec has no words for."""
    kind = cls.KIND
    if value is UNSET:
        return None
    if name in VECTORS[cls]:
        want = FIXED_SIZES.get(name)
        if want is not None and len(value) != want:
            raise MessageError("size", f"{kind}.{name}: {len(value)} values, expected {want}")
        vec = np.asarray(value, dtype=np.float64)
        if not np.isfinite(vec).all():
            raise MessageError("nonfinite", f"{kind}.{name}: NaN or inf")
        return vec
    if isinstance(value, float):
        if not math.isfinite(value) and not (name in NAN_ALLOWED and math.isnan(value)):
            raise MessageError("nonfinite", f"{name}: {value}")
        return value
    if isinstance(value, list):  # joint names
        if len(set(value)) != len(value):
            raise MessageError("schema", f"{kind}.{name}: duplicate names")
        return tuple(value)
    return value


def _no_ext(code: int, data: bytes) -> Any:
    raise ValueError(f"msgpack extension type {code}")


def _refusal(data: bytes | bytearray | memoryview, cls: type[Any],
             error: msgspec.MsgspecError) -> MessageError:
    """The reason messages.decode gives for what the typed decode refused: its checks in its
    order (msgpack's limits on the whole input, the envelope, the header, then each field)."""
    try:
        raw = msgpack.unpackb(data, raw=False, strict_map_key=True, ext_hook=_no_ext,
                              max_str_len=MAX_STR_CHARS, max_bin_len=0, max_array_len=MAX_ITEMS,
                              max_map_len=MAX_MAP_ITEMS, max_ext_len=0)
    except Exception as e:  # msgpack raises several unrelated types for bad input
        return MessageError("malformed", f"not a msgpack message ({type(e).__name__})")
    kind = cls.KIND
    if not isinstance(raw, dict):
        return MessageError("schema", f"expected a map, got {type(raw).__name__}")
    if raw.get("v") != VERSION:
        return MessageError("schema", f"version {raw.get('v')!r}, this runtime reads {VERSION}")
    if raw.get("kind") != kind:
        return MessageError("schema", f"kind {raw.get('kind')!r}, expected {kind!r}")
    known = {f.name for f in FIELDS[cls]} | {"v", "kind"}
    unknown = [k for k in raw if k not in known]
    if unknown:
        return MessageError("schema", f"{kind}: unknown field(s) {unknown[:3]!r}")
    values: dict[str, Any] = {}
    try:
        for f in FIELDS[cls]:
            if f.name not in raw:
                if f.required:
                    raise MessageError("schema", f"{kind}: missing field {f.name!r}")
                continue
            # The header's sign is checked after its types, as messages does.
            want = int if f.name in HEADER[:2] else f.type
            try:
                value = msgspec.convert(raw[f.name], want, strict=True)
            except msgspec.ValidationError as e:
                raise MessageError("schema", f"{kind}.{f.name}: {e}") from None
            values[f.name] = _checked(cls, f.name, value)
            if f.name == HEADER[-1] and min(values["seq"], values["session"]) < 0:
                raise MessageError("schema", f"{kind}: negative seq or session")
        check_sizes(kind, values)
    except MessageError as e:
        return e
    return MessageError("schema", str(error))  # e.g. a version 1.0 or true: not the integer 1


# --- Equivalence -------------------------------------------------------------------------------

def _outcome(decoder: Callable[[bytes, type[Any]], Any], data: bytes, cls: type[Any]) -> Any:
    """("ok", fields) or ("refused", reason) or ("crash", exception type): comparable outcomes."""
    try:
        msg = decoder(data, cls)
    except MessageError as e:
        return ("refused", e.reason)
    except Exception as e:  # a decoder that crashes on input is a finding, not a bench failure
        return ("crash", type(e).__name__)
    return ("ok", tuple((f.name, getattr(msg, f.name).tolist()
                         if isinstance(getattr(msg, f.name), np.ndarray) else getattr(msg, f.name))
                        for f in fields(msg)))


def _same(a: Any, b: Any) -> bool:
    """Outcomes equal, NaN equal to NaN (telemetry's latency may be NaN)."""
    return bool(msgpack.packb(a, use_bin_type=True) == msgpack.packb(b, use_bin_type=True))


def valid_messages(rng: random.Random, joints: int) -> dict[type[Any], Any]:
    """One valid message of each kind, with `joints` joints where a kind has joints."""
    names = tuple(f"j{i}" for i in range(joints))
    vec = np.asarray([rng.uniform(-3, 3) for _ in range(joints)])
    head = (rng.getrandbits(63), rng.randrange(1 << 20), time.time())
    return {
        Observation: Observation(*head, names, vec, -vec, np.ones(3), np.array([1.0, 0, 0, 0]),
                                 np.zeros(3), np.zeros(3)),
        Action: Action(*head, names, vec, "position", False, 5, time.time()),
        Goal: Goal(*head, "world", vec[:3] if joints >= 3 else vec),
        GoalReply: GoalReply(*head, True, "ok"),
        Telemetry: Telemetry(*head, 1, 2, 100, vec[:2], vec[:2], math.nan, math.nan, 7, vec),
        Status: Status(*head, {"ticks": 10, "p50_ms": 0.2, "mode": "policy", "safe": True}),
    }


def _any_value(rng: random.Random, depth: int = 0) -> Any:
    """Any msgpack value, hostile ones weighted up: non-finite floats, bools, bins, exts, huge
    ints, nested containers."""
    choices: list[Callable[[], Any]] = [
        lambda: None, lambda: rng.random() < 0.5, lambda: rng.randint(-(2**63), 2**64 - 1),
        lambda: rng.choice([math.nan, math.inf, -math.inf, -0.0, 1e308, 0.5]),
        lambda: rng.choice(["", "x", "é", "world", "position"]),
        lambda: b"" if rng.random() < 0.5 else b"ab",
        lambda: msgpack.ExtType(rng.randrange(128), b"" if rng.random() < 0.5 else b"z"),
        lambda: rng.choice([-1, 0, 1, 2]),
    ]
    if depth < 3:
        choices += [lambda: [_any_value(rng, depth + 1) for _ in range(rng.randrange(5))],
                    lambda: {rng.choice(["a", "b", "ticks"]): _any_value(rng, depth + 1)
                             for _ in range(rng.randrange(3))}]
    return rng.choice(choices)()


def _faults(rng: random.Random, raw: dict[Any, Any]) -> list[tuple[str, Callable[[], None]]]:
    """Single faults applied to a message's map in place: (label, apply)."""
    keys = [k for k in raw if k not in ("v", "kind")]

    def put(name: Any, value: Any) -> Callable[[], None]:
        return lambda: raw.__setitem__(name, value)

    key = rng.choice(keys)
    lists = [k for k in keys if isinstance(raw[k], list)]
    strs = [k for k in keys if isinstance(raw[k], str)]
    out = [
        ("field_any_value", put(key, _any_value(rng))),
        ("field_removed", lambda: raw.pop(key)),
        ("unknown_field", put(rng.choice(["surprise", "x" * 40]), _any_value(rng))),
        ("wrong_version", put("v", rng.choice([0, 2, True, 1.0, "1", None]))),
        ("wrong_kind", put("kind", rng.choice(["action", "goal", "", 1, None]))),
        ("negative_seq", put(rng.choice(["seq", "session"]), -rng.randint(1, 10))),
        ("nonfinite_stamp", put("stamp", rng.choice([math.nan, math.inf, -math.inf]))),
        ("non_string_key", put(rng.choice([3, b"", b"k", 1.5]), 1)),
        ("deep_nesting", put(key, _nested(rng.choice([10, 200, 2000])))),
    ]
    if lists:
        name = rng.choice(lists)
        out += [("array_over_limit", put(name, [0.5] * (MAX_ITEMS + 1))),
                ("nonfinite_in_array", put(name, [*raw[name][:-1], rng.choice([math.nan,
                                                                               math.inf])]))]
    if strs:
        out.append(("string_over_limit", put(rng.choice(strs), "s" * (MAX_STR_CHARS + 1))))
    return out


def _nested(depth: int) -> Any:
    value: Any = 0.5
    for _ in range(depth):
        value = [value]
    return value


def _pack(raw: dict[Any, Any]) -> bytes | None:
    try:
        return bytes(msgpack.packb(raw, use_bin_type=True, strict_types=False))
    except (ValueError, TypeError, OverflowError):  # msgpack cannot write it (nesting too deep)
        return None


def corpus(rng: random.Random, hostile: int) -> list[tuple[str, type[Any], bytes]]:
    """(label, kind, bytes): valid messages of every kind, then `hostile` faulted inputs."""
    out: list[tuple[str, type[Any], bytes]] = []
    for joints in (1, 3, 30, MAX_ITEMS):
        for cls, msg in valid_messages(rng, joints).items():
            out.append(("valid", cls, encode(msg)))
    kinds = list(WIRE)
    for _ in range(hostile):
        cls = rng.choice(kinds)
        valid = encode(valid_messages(rng, rng.choice([1, 3, 30]))[cls])
        roll = rng.random()
        if roll < 0.05:
            out.append(("random_bytes", cls, rng.randbytes(rng.randrange(64))))
            continue
        if roll < 0.10:
            out.append(("truncated", cls, valid[:rng.randrange(len(valid))]))
            continue
        if roll < 0.12:
            flipped = bytearray(valid)
            for _ in range(rng.randint(1, 4)):
                flipped[rng.randrange(len(flipped))] = rng.randrange(256)
            out.append(("bytes_flipped", cls, bytes(flipped)))
            continue
        if roll < 0.13:
            out.append(("oversized", cls, valid + bytes(MAX_MESSAGE_BYTES)))
            continue
        if roll < 0.16:  # a map announcing more entries than the limit, keys repeated
            head = valid[1:]
            entries = b"".join([msgpack.packb("seq"), msgpack.packb(1)] * MAX_MAP_ITEMS)
            count = (valid[0] & 0x0F) + MAX_MAP_ITEMS
            out.append(("map_over_limit", cls, b"\xde" + struct.pack(">H", count) + head
                        + entries))
            continue
        raw = msgpack.unpackb(valid)
        picked = rng.sample(_faults(rng, raw), 2 if roll < 0.5 else 1)
        for _, apply in picked:
            apply()
        data = _pack(raw)
        if data is not None:
            out.append(("+".join(sorted(label for label, _ in picked)), cls, data))
    return out


def equivalence(config: Config) -> dict[str, Any]:
    rng = random.Random(config.seed)
    items = corpus(rng, config.hostile)
    by_label: Counter[str] = Counter(label for label, _, _ in items)
    divergent: Counter[str] = Counter()
    kinds: dict[str, Counter[str]] = {}
    examples: dict[str, dict[str, Any]] = {}
    accepted = 0
    for label, cls, data in items:
        ours, theirs = _outcome(messages.decode, data, cls), _outcome(decode, data, cls)
        accepted += ours[0] == "ok"
        if _same(ours, theirs):
            continue
        divergent[label] += 1
        what = f"messages {_brief(ours)} / msgspec {_brief(theirs)}"
        kinds.setdefault(label, Counter())[what] += 1
        examples.setdefault(what, {"label": label, "kind": cls.KIND,
                                   "input_hex": data[:96].hex()})
    return {
        "inputs": len(items), "accepted_by_messages": accepted,
        "divergent": sum(divergent.values()),
        "by_fault": {label: {"inputs": n, "divergent": divergent[label],
                             "how": dict(kinds.get(label, {}))}
                     for label, n in sorted(by_label.items())},
        "examples": examples,
    }


def _brief(outcome: Any) -> str:
    return outcome[0] if outcome[0] == "ok" else f"{outcome[0]}:{outcome[1]}"


# --- Speed -------------------------------------------------------------------------------------

def speed(config: Config) -> dict[str, Any]:
    """p50 µs per decode of each case, both decoders taking turns in rounds."""
    rng = random.Random(config.seed)
    reacher = Observation(1, 2, time.time(), ("elbow", "shoulder", "extra"),
                          np.array([0.3, -0.5, 9.0]), np.zeros(3))
    cases = {
        "observation_reacher": (Observation, encode(reacher)),
        "observation_30_joints": (Observation, encode(valid_messages(rng, 30)[Observation])),
        "goal": (Goal, encode(Goal(1, 2, time.time(), "world", np.array([0.1, 0.2, 0.3])))),
        "action_reacher": (Action, encode(Action(1, 2, time.time(), ("shoulder", "elbow"),
                                                 np.array([0.1, -0.2]), "position", False, 1,
                                                 time.time()))),
        # Refusals: the prototype decodes these twice (typed, then in messages' order).
        "refused_unknown_field": (Observation, msgpack.packb(
            {**msgpack.unpackb(encode(reacher)), "surprise": 1})),
        "refused_garbage": (Observation, rng.randbytes(64)),
    }
    decoders = {"messages": messages.decode, "msgspec": decode}
    out: dict[str, Any] = {}
    for case, (cls, data) in cases.items():
        per_round: dict[str, list[float]] = {name: [] for name in decoders}
        for _ in range(config.rounds):
            for name, decoder in decoders.items():
                per_round[name].append(_p50_us(decoder, data, cls, config.reps))
        out[case] = {"bytes": len(data), **{
            name: {"p50_us": float(np.median(p)), "p50_us_per_round": p,
                   "spread_us": float(max(p) - min(p))} for name, p in per_round.items()}}
        out[case]["msgspec_over_messages"] = (out[case]["msgspec"]["p50_us"]
                                              / out[case]["messages"]["p50_us"])
    return out


def _p50_us(decoder: Callable[[bytes, type[Any]], Any], data: bytes, cls: type[Any],
            reps: int) -> float:
    times = np.empty(reps)
    clock = time.perf_counter_ns
    for i in range(reps):
        start = clock()
        with contextlib.suppress(MessageError):
            decoder(data, cls)
        times[i] = clock() - start
    return float(np.median(times)) / 1e3


# --- Command line ------------------------------------------------------------------------------

@dataclass
class Config:
    """Where and how long to measure."""

    out: Path = Path("bench/results/msgspec_messages_cpu.json")
    hostile: int = 20000  # faulted inputs in the equivalence corpus
    rounds: int = 7  # speed rounds, the decoders alternating
    reps: int = 20000  # decodes per decoder per round
    seed: int = 0
    quick: bool = False  # a smoke test: a small corpus and few reps, written to /tmp


QUICK_OUT = Path("/tmp/msgspec_messages_quick.json")
QUICK_HOSTILE, QUICK_ROUNDS, QUICK_REPS = 500, 2, 500


def main(config: Config) -> dict[str, Any]:
    if config.quick:
        config = dataclasses.replace(config, out=QUICK_OUT, hostile=QUICK_HOSTILE,
                                     rounds=QUICK_ROUNDS, reps=QUICK_REPS)
    require_at_least_one(config, "hostile", "rounds", "reps")
    result: dict[str, Any] = {
        "benchmark": "msgspec_messages",
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "device": device_info(),
        "versions": {**versions(), "msgpack": ".".join(map(str, msgpack.version)),
                     "msgspec": msgspec.__version__},
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(config).items()},
        "equivalence": equivalence(config),
        "speed": speed(config),
    }
    config.out.parent.mkdir(parents=True, exist_ok=True)
    write_json(config.out, result)
    eq = result["equivalence"]
    print(f"equivalence: {eq['divergent']} of {eq['inputs']} inputs differ")
    for case, row in result["speed"].items():
        print(f"{case}: messages {row['messages']['p50_us']:.2f} µs, msgspec "
              f"{row['msgspec']['p50_us']:.2f} µs ({row['msgspec_over_messages']:.2f}×)")
    print(f"wrote {config.out}")
    return result


if __name__ == "__main__":
    run_cli(main, Config, "msgspec_messages")
