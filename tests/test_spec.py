"""The policy spec: JSON round trips, every validation error, and the action mapping.

The spec crosses every stage (env → checkpoint → ONNX → robot), so a spec that cannot be right
must be refused where it is built, with a message that names the field a user has to fix.
`toy_spec` (conftest) builds the valid spec the tests change one field of at a time.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crl.core.spec import (
    FORMAT,
    MAX_GOAL_RAMP_S,
    ActionSpec,
    Field,
    GoalSpec,
    NetworkSpec,
    PolicySpec,
    Provenance,
    SpecError,
)

ToySpec = Callable[..., PolicySpec]


def action(**changes: Any) -> ActionSpec:
    kw: dict[str, Any] = dict(size=2, joints=("shoulder", "elbow"), kind="position",
                              scale=(1.0, 2.0), offset=(0.5, -0.5), low=(-1.0, -1.0),
                              high=(1.0, 1.0))
    kw.update(changes)
    return ActionSpec(**kw)


def goal(**changes: Any) -> GoalSpec:
    kw: dict[str, Any] = dict(fields=(Field("xy", 2),), frame="world", low=(-1.0, -1.0),
                              high=(1.0, 1.0))
    kw.update(changes)
    return GoalSpec(**kw)


# ---------------------------------------------------------------------------- round trips


def test_json_round_trip_is_equal(toy_spec: ToySpec):
    spec = toy_spec()
    again = PolicySpec.from_json(spec.to_json())
    assert again == spec
    assert again.to_json() == spec.to_json()


def test_dict_round_trip_is_equal_and_plain_json(toy_spec: ToySpec):
    spec = toy_spec()
    d = spec.to_dict()
    assert json.loads(json.dumps(d)) == json.loads(spec.to_json())
    assert PolicySpec.from_dict(d) == spec


def test_round_trip_without_network(toy_spec: ToySpec):
    spec = toy_spec(network=None)
    again = PolicySpec.from_json(spec.to_json(indent=None))
    assert again.network is None
    assert again == spec


def test_optional_keys_take_defaults(toy_spec: ToySpec):
    d = toy_spec(network=NetworkSpec(depth=4, width=8, repr_dim=4, residual=True)).to_dict()
    del d["network"]["residual"]
    for key in ("train_step", "git_commit", "domain_randomization"):
        del d["provenance"][key]
    del d["action"]["lowpass"]  # a spec from before the command filter: none
    for f in d["observation"]:
        del f["meaning"], f["frame"], f["names"]
    spec = PolicySpec.from_dict(d)
    assert spec.network == NetworkSpec(depth=4, width=8, repr_dim=4, residual=True)
    assert PolicySpec.from_dict({k: v for k, v in d.items() if k != "network"}).network is None
    assert spec.provenance.train_step == 0 and spec.provenance.git_commit == ""
    assert spec.observation[0] == Field("joint_pos", 5)
    assert spec.action.lowpass == 1.0


def test_the_critics_shape_is_written_only_where_it_differs_from_the_actors(toy_spec: ToySpec):
    """`depth`/`width` are the actor's; a spec without critic sizes (every spec written before
    they could differ) means the critic shares them, and such a spec writes no critic keys, so
    its JSON (in checkpoints and ONNX files) is what it always was."""
    shared = toy_spec(network=NetworkSpec(depth=8, width=64, repr_dim=16))
    assert set(shared.to_dict()["network"]) == {"depth", "width", "repr_dim", "residual"}
    assert shared.network is not None and shared.network.critic_shape == (8, 64)
    apart = toy_spec(network=NetworkSpec(depth=8, width=64, repr_dim=16, critic_depth=32))
    d = apart.to_dict()
    assert d["network"]["critic_depth"] == 32 and "critic_width" not in d["network"]
    again = PolicySpec.from_json(apart.to_json())
    assert again == apart and again.network is not None
    assert again.network.critic_shape == (32, 64)


def test_dims_and_slices(toy_spec: ToySpec):
    spec = toy_spec()
    assert (spec.obs_dim, spec.goal_dim, spec.act_dim) == (9, 2, 3)
    assert spec.observation_slices() == {"joint_pos": slice(0, 5), "joint_vel": slice(5, 9)}
    assert spec.goal_slices() == {"xy": slice(0, 2)}


def test_replace_validates(toy_spec: ToySpec):
    assert toy_spec().replace(task="arm").task == "arm"
    with pytest.raises(SpecError, match=r"spec\.control_hz"):
        toy_spec().replace(control_hz=0.0)


def test_round_trip_with_tuple_and_numpy_dr_ranges(toy_spec: ToySpec):
    np = pytest.importorskip("numpy")
    spec = toy_spec(provenance=Provenance("reacher", "00", domain_randomization={
        "friction": (0.8, 1.2), "max_action_delay": np.int64(2), "noise": np.float32(0.5)}))
    assert spec.provenance.domain_randomization == {
        "friction": [0.8, 1.2], "max_action_delay": 2, "noise": 0.5}
    assert PolicySpec.from_json(spec.to_json()) == spec


# Hypothesis: any valid spec survives JSON unchanged (floats included, by repr).
finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False)
names = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=8)


@st.composite
def fields(draw: st.DrawFn) -> tuple[Field, ...]:
    keys = draw(st.lists(names, min_size=1, max_size=4, unique=True))
    out = []
    for k in keys:
        size = draw(st.integers(1, 4))
        labels = draw(st.one_of(st.just(()), st.lists(names, min_size=size, max_size=size)))
        out.append(Field(k, size, draw(st.text(max_size=10)), draw(names), tuple(labels)))
    return tuple(out)


@st.composite
def bounds(draw: st.DrawFn, size: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    pairs = [sorted(draw(st.tuples(finite, finite))) for _ in range(size)]
    return tuple(p[0] for p in pairs), tuple(p[1] for p in pairs)


@st.composite
def specs(draw: st.DrawFn) -> PolicySpec:
    goal_fields = draw(fields())
    g_low, g_high = draw(bounds(sum(f.size for f in goal_fields)))
    n = draw(st.integers(1, 6))
    a_low, a_high = draw(bounds(n))
    dr = draw(st.dictionaries(names, st.one_of(finite, st.lists(finite, max_size=3),
                                               st.tuples(finite, finite)), max_size=3))
    network = draw(st.one_of(st.none(), st.builds(
        NetworkSpec, depth=st.integers(1, 64).map(lambda d: 4 * d), width=st.integers(1, 1024),
        repr_dim=st.integers(1, 128), residual=st.booleans(),
        critic_depth=st.none() | st.integers(1, 64).map(lambda d: 4 * d),
        critic_width=st.none() | st.integers(1, 1024))))
    positive = st.floats(min_value=1e-6, max_value=1e4, allow_nan=False)
    hz = draw(positive)
    return PolicySpec(
        task=draw(names),
        observation=draw(fields()),
        goal=GoalSpec(goal_fields, draw(names), g_low, g_high),
        action=ActionSpec(
            size=n,
            joints=tuple(draw(st.lists(names, min_size=n, max_size=n, unique=True))),
            kind=draw(st.sampled_from(("position", "effort"))),
            scale=tuple(draw(st.lists(finite.filter(bool), min_size=n, max_size=n))),
            offset=tuple(draw(st.lists(finite, min_size=n, max_size=n))),
            low=a_low, high=a_high,
            lowpass=draw(st.floats(min_value=1e-3, max_value=1.0)),
            goal_ramp=draw(st.integers(0, math.floor(MAX_GOAL_RAMP_S * hz))),
        ),
        control_hz=hz,
        success_radius=draw(positive),
        provenance=Provenance(draw(names), draw(st.text(max_size=64)),
                              draw(st.integers(0, 2**40)), draw(st.text(max_size=40)), dr),
        network=network,
    )


@settings(max_examples=60, deadline=None)
@given(specs())
def test_round_trip_property(spec: PolicySpec):
    assert PolicySpec.from_json(spec.to_json()) == spec
    assert PolicySpec.from_dict(json.loads(spec.to_json(indent=None))) == spec


# ------------------------------------------------------------- validation: each field named


@pytest.mark.parametrize(
    ("changes", "pattern"),
    [
        # format and task
        ({"format": "crl-policy/2"}, r"spec\.format: 'crl-policy/2' is unknown"),
        ({"task": ""}, r"spec\.task: empty"),
        ({"goal": goal(frame="")}, r"spec\.goal\.frame: empty"),
        ({"provenance": Provenance(env="", robot_model_sha256="0" * 64)},
         r"spec\.provenance\.env: empty"),
        # empty fields, empty names, duplicates, sizes
        ({"observation": ()}, r"spec\.observation: no fields"),
        ({"observation": (Field("", 2),)}, r"spec\.observation: a field has an empty name"),
        ({"observation": (Field("q", 2), Field("q", 1))},
         r"spec\.observation: duplicate field name 'q'"),
        ({"observation": (Field("q", 0),)}, r"spec\.observation\.q\.size: must be positive"),
        ({"observation": (Field("q", 2.5),)},  # type: ignore[arg-type]
         r"spec\.observation\.q\.size: must be an integer, got 2\.5"),
        ({"observation": (Field("q", 2, names=("a", "b", "c")),)},
         r"spec\.observation\.q\.names: 3 names for size 2"),
        ({"goal": goal(fields=())}, r"spec\.goal\.fields: no fields"),
        ({"goal": goal(fields=(Field("xy", 1), Field("xy", 1)))},
         r"spec\.goal\.fields: duplicate field name 'xy'"),
        ({"goal": goal(fields=(Field("xy", -1),))}, r"spec\.goal\.fields\.xy\.size"),
        # goal bounds vs goal size, non-finite, inverted
        ({"goal": goal(low=(-1.0,))}, r"spec\.goal\.low: 1 entries, expected 2"),
        ({"goal": goal(high=(1.0, 1.0, 1.0))}, r"spec\.goal\.high: 3 entries, expected 2"),
        ({"goal": goal(fields=(Field("xyz", 3),))}, r"spec\.goal\.low: 2 entries, expected 3"),
        ({"goal": goal(low=(-1.0, math.nan))}, r"spec\.goal\.low: non-finite"),
        ({"goal": goal(high=(math.inf, 1.0))}, r"spec\.goal\.high: non-finite"),
        ({"goal": goal(low=(-1.0, 2.0))}, r"spec\.goal: low\[1\]=2\.0 > high\[1\]=1\.0"),
        # action: size, kind, joints, scale/offset, bounds
        ({"action": action(size=0, joints=(), scale=(), offset=(), low=(), high=())},
         r"spec\.action\.size: must be positive"),
        ({"action": action(kind="velocity")}, r"spec\.action\.kind: 'velocity' is not one of"),
        ({"action": action(joints=("shoulder",))}, r"spec\.action\.joints: 1 names for"),
        ({"action": action(joints=("a", "a"))}, r"spec\.action\.joints: duplicate joint names"),
        ({"action": action(joints=("a", ""))}, r"spec\.action\.joints: an empty joint name"),
        ({"action": action(scale=(1.0, 0.0))}, r"spec\.action\.scale: a zero entry"),
        ({"action": action(scale=(1.0,))}, r"spec\.action\.scale: 1 entries for action\.size 2"),
        ({"action": action(offset=(0.0, 0.0, 0.0))}, r"spec\.action\.offset: 3 entries"),
        ({"action": action(scale=(1.0, math.inf))}, r"spec\.action\.scale: non-finite"),
        ({"action": action(offset=(math.nan, 0.0))}, r"spec\.action\.offset: non-finite"),
        ({"action": action(low=(-1.0,))}, r"spec\.action\.low: 1 entries, expected 2"),
        ({"action": action(high=(1.0, math.nan))}, r"spec\.action\.high: non-finite"),
        ({"action": action(low=(2.0, -1.0))}, r"spec\.action: low\[0\]=2\.0 > high\[0\]=1\.0"),
        ({"action": action(lowpass=0.0)}, r"spec\.action\.lowpass: must be a number in \(0, 1\]"),
        ({"action": action(lowpass=1.5)}, r"spec\.action\.lowpass"),
        ({"action": action(lowpass=-0.3)}, r"spec\.action\.lowpass"),
        ({"action": action(lowpass=math.nan)}, r"spec\.action\.lowpass"),
        ({"action": action(lowpass=True)}, r"spec\.action\.lowpass"),
        # rates and radii
        ({"control_hz": 0.0}, r"spec\.control_hz: must be positive and finite"),
        ({"control_hz": math.inf}, r"spec\.control_hz"),
        ({"success_radius": -0.1}, r"spec\.success_radius: must be positive and finite"),
        ({"success_radius": math.nan}, r"spec\.success_radius"),
        # network shape
        ({"network": NetworkSpec(depth=0, width=8, repr_dim=4)}, r"spec\.network\.depth"),
        ({"network": NetworkSpec(depth=6, width=8, repr_dim=4)},
         r"spec\.network\.depth: must be a positive multiple of 4, got 6"),
        ({"network": NetworkSpec(depth=-4, width=8, repr_dim=4)}, r"spec\.network\.depth"),
        ({"network": NetworkSpec(depth=4, width=0, repr_dim=4)}, r"spec\.network\.width"),
        ({"network": NetworkSpec(depth=4, width=8, repr_dim=0)}, r"spec\.network\.repr_dim"),
        ({"network": NetworkSpec(depth=4, width=8, repr_dim=4, critic_depth=6)},
         r"spec\.network\.critic_depth: must be a positive multiple of 4, got 6"),
        ({"network": NetworkSpec(depth=4, width=8, repr_dim=4, critic_width=0)},
         r"spec\.network\.critic_width: must be positive"),
    ],
)
def test_invalid_spec_names_the_field(changes: dict[str, Any], pattern: str, toy_spec: ToySpec):
    with pytest.raises(SpecError, match=pattern):
        toy_spec(**changes)


def _json_with(spec: PolicySpec, edit: Any) -> str:
    d = json.loads(spec.to_json())
    edit(d)
    return json.dumps(d)


@pytest.mark.parametrize(
    ("edit", "pattern"),
    [
        (lambda d: d.update(format="crl-policy/0"),
         r"spec\.format: 'crl-policy/0' is not a format this version reads"),
        (lambda d: d.pop("format"), r"spec\.format: None"),
        (lambda d: d.pop("task"), r"spec: missing field 'task'"),
        (lambda d: d.pop("goal"), r"spec: missing field 'goal'"),
        (lambda d: d["goal"].pop("frame"), r"spec: missing field 'frame'"),
        (lambda d: d["action"].pop("kind"), r"spec: missing field 'kind'"),
        (lambda d: d["provenance"].pop("robot_model_sha256"),
         r"spec: missing field 'robot_model_sha256'"),
        (lambda d: d["network"].pop("depth"), r"spec: missing field 'depth'"),
        (lambda d: d["observation"][0].pop("size"),
         r"spec\.observation: a field lacks 'size'"),
        (lambda d: d["goal"]["fields"][0].pop("name"), r"spec\.goal\.fields: a field lacks 'name'"),
        (lambda d: d["action"].update(size="two"), r"spec: malformed value"),
        (lambda d: d["goal"].update(low=1.0), r"spec: malformed value"),
        (lambda d: d["action"].update(scale=["a", "b"]), r"spec: malformed value"),
        (lambda d: d.update(observation=[3]), r"spec: malformed value"),
        # validation still runs on the JSON path
        (lambda d: d["action"].update(kind="torque"), r"spec\.action\.kind"),
        (lambda d: d["action"].update(lowpass="0.3"), r"spec\.action\.lowpass"),
        (lambda d: d["action"].update(lowpass=True), r"spec\.action\.lowpass"),
        (lambda d: d["action"].update(lowpass=None), r"spec\.action\.lowpass"),
        (lambda d: d["action"].update(lowpass=0), r"spec\.action\.lowpass"),
        (lambda d: d["goal"].update(low=[2.0, 2.0]), r"spec\.goal: low\[0\]"),
    ],
)
def test_from_json_errors_name_the_field(edit: Any, pattern: str, toy_spec: ToySpec):
    with pytest.raises(SpecError, match=pattern):
        PolicySpec.from_json(_json_with(toy_spec(), edit))


@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        ("{not json", r"spec: not valid JSON"),
        ("", r"spec: not valid JSON"),
        ("[1, 2]", r"spec: expected a JSON object, got list"),
        ('"crl-policy/1"', r"spec: expected a JSON object, got str"),
    ],
)
def test_malformed_json(text: str, pattern: str):
    with pytest.raises(SpecError, match=pattern):
        PolicySpec.from_json(text)


def test_non_finite_json_numbers_are_refused(toy_spec: ToySpec):
    # Python's json reads NaN/Infinity; validation must still catch them.
    text = toy_spec().to_json().replace('"control_hz": 50.0', '"control_hz": NaN')
    with pytest.raises(SpecError, match=r"spec\.control_hz"):
        PolicySpec.from_json(text)


def test_format_constant(toy_spec: ToySpec):
    assert toy_spec().to_dict()["format"] == FORMAT == "crl-policy/1"


# ------------------------------------------------------------------------ action mapping


def test_to_physical_maps_offset_plus_scale():
    a = action(low=(-10.0, -10.0), high=(10.0, 10.0))
    assert a.to_physical([0.0, 0.0]) == [0.5, -0.5]
    assert a.to_physical([1.0, -1.0]) == [1.5, -2.5]
    assert a.to_physical((0.5, 0.25)) == pytest.approx([1.0, 0.0])


def test_to_physical_clips_to_limits():
    a = action()  # offset + scale * a spans [-0.5, 1.5] and [-2.5, 1.5]; limits are ±1
    assert a.to_physical([1.0, -1.0]) == [1.0, -1.0]
    assert a.to_physical([-1.0, 1.0]) == [-0.5, 1.0]
    assert a.to_physical([100.0, -100.0]) == [1.0, -1.0]


def test_to_physical_accepts_numpy_and_returns_floats():
    np = pytest.importorskip("numpy")
    out = action().to_physical(np.array([0.25, 0.0], dtype=np.float32))
    assert out == [0.75, -0.5]
    assert all(type(v) is float for v in out)


@pytest.mark.parametrize("values", [[], [0.0], [0.0, 0.0, 0.0]])
def test_to_physical_wrong_length(values: list[float]):
    with pytest.raises(SpecError, match=r"action: got \d values, spec\.action\.size is 2"):
        action().to_physical(values)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.floats(-1.0, 1.0), min_size=2, max_size=2))
def test_to_physical_stays_in_limits(a: list[float]):
    spec = action(low=(-0.7, -2.0), high=(0.9, 0.1))
    out = spec.to_physical(a)
    assert all(lo <= v <= hi for v, lo, hi in zip(out, spec.low, spec.high, strict=True))


def test_to_physical_refuses_non_finite_actions(toy_spec: ToySpec):
    with pytest.raises(SpecError, match="non-finite"):
        toy_spec().action.to_physical([float("nan")] * toy_spec().act_dim)
