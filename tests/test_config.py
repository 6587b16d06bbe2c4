"""Bad configs fail in plain Python with one line naming the field, before anything compiles."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from crl.core.usage import ConfigError
from crl.sim.config import (
    DR_HELD_OUT,
    DR_TRAIN,
    OBSERVATION_FIELDS,
    AnnulusSampler,
    BoxSampler,
    ChoiceSampler,
    DRConfig,
    StartSampler,
    TaskConfig,
)
from crl.sim.env import GoalReachEnv
from crl.sim.tasks import TASKS, UnknownTaskError, make
from crl.sim.tasks.reacher import CONFIG as REACHER

RANGES = ("friction", "body_mass", "joint_damping", "actuator_gain")


def test_config_errors_are_value_errors_that_name_what_is_wrong() -> None:
    """The CLIs turn ValueErrors into one-line usage errors: both kinds must be caught as one and
    say what was wrong."""
    with pytest.raises(ValueError, match="no_such_task") as unknown:
        make("no_such_task")
    assert isinstance(unknown.value, UnknownTaskError)
    with pytest.raises(ValueError, match=r"DRConfig\.action_delay") as bad:
        DRConfig(action_delay=())
    assert isinstance(bad.value, ConfigError)


def _dr(name: str, value: object) -> DRConfig:
    """A DRConfig with `value` for a physical parameter or for one field's noise."""
    if name == "obs_noise":
        return DRConfig(obs_noise={"joint_pos": value})  # type: ignore[dict-item]
    return DRConfig(**{name: value})  # type: ignore[arg-type]


def _where(name: str) -> str:
    return r"DRConfig\.obs_noise\['joint_pos'\]" if name == "obs_noise" else rf"DRConfig\.{name}"


@pytest.mark.parametrize("name", [*RANGES, "obs_noise"])
def test_dr_range_low_above_high(name: str) -> None:
    with pytest.raises(ConfigError, match=rf"{_where(name)}: low 0\.9 > high 0\.8"):
        _dr(name, (0.9, 0.8))
    with pytest.raises(ConfigError, match=rf"{_where(name)}: low 0\.9 > high 0\.8"):
        _dr(name, ((0.1, 0.2), (0.9, 0.8)))


@pytest.mark.parametrize("name", ["body_mass", "actuator_gain"])
@pytest.mark.parametrize("low", [0.0, -0.5])
def test_dr_scale_must_be_positive(name: str, low: float) -> None:
    with pytest.raises(ConfigError, match=rf"DRConfig\.{name}: scale must be positive"):
        DRConfig(**{name: ((low, 1.0),)})


@pytest.mark.parametrize("name", ["friction", "joint_damping", "obs_noise"])
def test_dr_range_must_not_be_negative(name: str) -> None:
    with pytest.raises(ConfigError, match=rf"{_where(name)}: must not be negative"):
        _dr(name, ((-0.1, 1.0),))


@pytest.mark.parametrize("bad", [(1.0,), (1.0, float("nan")), "wide", (), ((1.0, 2.0, 3.0),)])
def test_dr_range_must_be_pairs_of_numbers(bad: object) -> None:
    with pytest.raises(ConfigError, match=r"DRConfig\.friction"):
        DRConfig(friction=bad)  # type: ignore[arg-type]


def test_dr_intervals_of_one_parameter_must_not_meet() -> None:
    with pytest.raises(ConfigError, match=r"DRConfig\.friction: intervals .* meet"):
        DRConfig(friction=((0.4, 0.7), (0.7, 1.0)))
    assert DRConfig(friction=((1.4, 1.8), (0.4, 0.6))).friction == ((0.4, 0.6), (1.4, 1.8))


def test_dr_a_single_pair_is_one_interval() -> None:
    assert DRConfig(friction=(0.5, 1.5)).friction == ((0.5, 1.5),)  # type: ignore[arg-type]


def test_dr_noise_is_per_sensed_observation_field() -> None:
    with pytest.raises(ConfigError, match=r"DRConfig\.obs_noise\['lidar'\]: unknown observation"):
        DRConfig(obs_noise={"lidar": ((0.0, 0.1),)})
    with pytest.raises(ConfigError, match=r"obs_noise\['last_action'\]: the controller knows"):
        DRConfig(obs_noise={"last_action": ((0.0, 0.1),)})
    with pytest.raises(ConfigError, match=r"DRConfig\.obs_noise: expected a mapping"):
        DRConfig(obs_noise=((0.0, 0.1),))  # type: ignore[arg-type]
    dr = DRConfig(obs_noise={"site_pos": ((0.0, 0.002),), "joint_pos": ((0.0, 0.01),)})
    assert list(dr.obs_noise) == ["joint_pos", "site_pos"]  # registry order
    assert dr.noise("joint_vel") == ((0.0, 0.0),)


def test_the_default_noise_is_in_each_fields_units() -> None:
    """Every sensed field has training noise, sized for its unit (rad against rad/s, m against
    m/s), and held-out noise above it."""
    sensed = [n for n, f in OBSERVATION_FIELDS.items() if f.sensed]
    assert set(DR_TRAIN.obs_noise) == set(DR_HELD_OUT.obs_noise) == set(sensed)
    high = {n: DR_TRAIN.noise(n)[-1][1] for n in sensed}
    assert high["joint_vel"] > high["joint_pos"] and high["base_lin_vel"] > high["base_pos"]
    for n in sensed:
        ((low_h, _),) = DR_HELD_OUT.noise(n)
        assert low_h > high[n], n


def test_dr_ranges_read_back_from_json_are_accepted() -> None:
    written = DRConfig(
        friction=((0.4, 0.6), (1.4, 1.8)),
        obs_noise={"joint_pos": ((0.0, 0.01),)},
        action_delay=(2, 3),
    )
    fields = json.loads(json.dumps(written.to_dict()))
    assert isinstance(fields["friction"], list)
    again = DRConfig(**fields)
    assert again == written and hash(again) == hash(written)


@pytest.mark.parametrize("delays", [(-1,), (1.5,), (True,), (), 2, (1, 1)])
def test_dr_delays_are_distinct_non_negative_ints(delays: object) -> None:
    with pytest.raises(ConfigError, match=r"DRConfig\.action_delay"):
        DRConfig(action_delay=delays)  # type: ignore[arg-type]


def test_held_out_ranges_must_lie_outside_the_training_ranges() -> None:
    """A held-out range that meets the training range (touching included), or a delay training
    also draws, would make held-out evaluation partly a training condition: refused, named."""
    with pytest.raises(ConfigError, match=r"TaskConfig\.dr_held_out: friction, body_mass, "
                       r"joint_damping, actuator_gain, obs_noise\['joint_pos'\], "
                       r"obs_noise\['joint_vel'\], obs_noise\['site_pos'\], action_delay can"):
        REACHER.replace(dr_held_out=REACHER.dr_train)
    touching = dataclasses.replace(REACHER.dr_held_out, friction=((0.4, 0.7), (1.4, 1.8)))
    with pytest.raises(ConfigError, match=r"TaskConfig\.dr_held_out: friction can draw"):
        REACHER.replace(dr_held_out=touching)
    delay = dataclasses.replace(REACHER.dr_held_out, action_delay=(1, 2))
    with pytest.raises(ConfigError, match=r"TaskConfig\.dr_held_out: action_delay can draw"):
        REACHER.replace(dr_held_out=delay)
    # Noise of a field the task does not observe does not matter; fields it observes do.
    unobserved = dataclasses.replace(
        REACHER.dr_held_out, obs_noise={**REACHER.dr_held_out.obs_noise, "base_pos": ((0, 1),)}
    )
    assert REACHER.replace(dr_held_out=unobserved).dr_held_out == unobserved
    quiet = dataclasses.replace(REACHER.dr_held_out, obs_noise={})
    with pytest.raises(ConfigError, match=r"obs_noise\['joint_pos'\].*can draw"):
        REACHER.replace(dr_train=dataclasses.replace(REACHER.dr_train, obs_noise={}),
                        dr_held_out=quiet)


def test_unknown_observation_field_lists_the_known_ones() -> None:
    with pytest.raises(ConfigError, match=r"TaskConfig\.observation: unknown field 'lidar'") as e:
        REACHER.replace(observation=("joint_pos", "lidar"))
    assert all(name in str(e.value) for name in OBSERVATION_FIELDS)


def test_base_fields_need_a_base_body() -> None:
    with pytest.raises(ConfigError, match=r"TaskConfig\.base_body: .*'base_lin_vel'"):
        REACHER.replace(observation=("joint_pos", "base_lin_vel"))
    with pytest.raises(ConfigError, match=r"TaskConfig\.base_body"):
        REACHER.replace(start=StartSampler(base_xy=BoxSampler((0.0, 0.0), (1.0, 1.0))))


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"episode_length": 0}, "episode_length"),
        ({"episode_length": 2.5}, "episode_length"),
        ({"success_radius": 0.0}, "success_radius"),
        ({"control_hz": -25.0}, "control_hz"),
        ({"action_lowpass": 0.0}, "action_lowpass"),
        ({"action_lowpass": 1.5}, "action_lowpass"),
        ({"action_lowpass": float("nan")}, "action_lowpass"),
        ({"goal_ramp": -1}, "goal_ramp"),
        ({"goal_ramp": 2.5}, "goal_ramp"),
        ({"goal_ramp": True}, "goal_ramp"),
        ({"goal_ramp": 10_000}, "goal_ramp"),  # longer than the episode
        ({"goal_ramp": 251, "episode_length": 1000}, "goal_ramp"),  # over 10 s at 25 Hz
        ({"goal_ramp": 5, "episode_length": -3}, "episode_length"),
        ({"goal_axes": "xq"}, "goal_axes"),
        ({"goal_axes": "xx"}, "goal_axes"),
        ({"goal_axes": "xyz"}, "goal_sampler"),  # the sampler draws 2 coordinates
        ({"goal_kind": "geom"}, "goal_kind"),
        ({"goal_frame": "base"}, "goal_frame"),
        ({"observation": ()}, "observation"),
        ({"observation": ("joint_pos", "joint_pos")}, "observation"),
        ({"actuated_joints": ("elbow", "elbow")}, "actuated_joints"),
        ({"model_file": ""}, "model_file"),
        ({"dr_train": {"friction": (0.5, 1.5)}}, "dr_train"),
        ({"healthy_z_range": (0.3,)}, "healthy_z_range"),
        ({"healthy_z_range": (0.3, 0.3)}, "healthy_z_range"),
        ({"healthy_z_range": (0.1, float("nan"))}, "healthy_z_range"),
        ({"healthy_z_range": (0.1, 0.3)}, "base_body"),  # the reacher has no base to bound
    ],
)
def test_task_config_names_the_bad_field(changes: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError, match=rf"TaskConfig\.{field}"):
        REACHER.replace(**changes)


@pytest.mark.parametrize(
    ("make_sampler", "field"),
    [
        (lambda: BoxSampler((0.0, 1.0), (1.0, 0.5)), "BoxSampler"),
        (lambda: BoxSampler((0.0,), (1.0, 2.0)), "BoxSampler"),
        (lambda: AnnulusSampler(r_min=0.3, r_max=0.2), "AnnulusSampler.r_min"),
        (lambda: ChoiceSampler(points=()), "ChoiceSampler.points"),
        (lambda: ChoiceSampler(points=((0.0, 0.0), (1.0,))), "ChoiceSampler.points"),
        (lambda: ChoiceSampler(points=((0.0, 0.0),), noise=-1.0), "ChoiceSampler.noise"),
        (lambda: StartSampler(joint_noise=-0.1), "StartSampler.joint_noise"),
        (lambda: StartSampler(base_xy=BoxSampler((0.0,), (1.0,))), "StartSampler.base_xy"),
    ],
)
def test_samplers_name_the_bad_field(make_sampler: object, field: str) -> None:
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        make_sampler()  # type: ignore[operator]


@pytest.mark.parametrize(
    ("changes", "field", "name"),
    [
        ({"goal_name": "thumb"}, "goal_name", "thumb"),
        ({"goal_kind": "body", "goal_name": "hand"}, "goal_name", "hand"),
        ({"actuated_joints": ("shoulder", "wrist")}, "actuated_joints", "wrist"),
        ({"obs_site": "camera"}, "obs_site", "camera"),
        ({"start": StartSampler(keyframe="crouch")}, "start.keyframe", "crouch"),
        ({"model_file": "no_such_robot.xml"}, "model_file", "no_such_robot.xml"),
        ({"control_hz": 30.0}, "control_hz", "30.0"),  # 100 Hz physics: 30 does not divide it
    ],
)
def test_names_missing_from_the_mjcf(changes: dict[str, object], field: str, name: str) -> None:
    config = REACHER.replace(**changes)
    with pytest.raises(ConfigError, match=rf"TaskConfig\.{field}: .*{name}"):
        GoalReachEnv(config)


def test_base_body_without_free_joint() -> None:
    config = REACHER.replace(base_body="link1", observation=("joint_pos", "base_pos"))
    with pytest.raises(ConfigError, match=r"TaskConfig\.base_body: body 'link1' has no free joint"):
        GoalReachEnv(config)


def test_unknown_task_lists_the_tasks() -> None:
    with pytest.raises(UnknownTaskError, match="'cheetah'") as e:
        make("cheetah")
    assert all(task in str(e.value) for task in TASKS)


def test_unknown_dr_mode_names_dr() -> None:
    with pytest.raises(ConfigError, match=r"dr: 'full' is not one of"):
        make("reacher", dr="full")


def test_every_task_config_is_valid() -> None:
    for task in TASKS:
        config = make(task, dr="off").config
        assert isinstance(config, TaskConfig) and config.name == task


POINT_MASS = """
<mujoco>
  <option timestep="0.01"/>
  <worldbody>
    <body name="puck">
      <joint name="x" type="slide" axis="1 0 0" range="-1 1"/>
      <joint name="y" type="slide" axis="0 1 0" range="-1 1"/>
      <geom type="sphere" size="0.05" mass="1"/>
      <site name="center"/>
    </body>
  </worldbody>
  <actuator>
    <motor name="x" joint="x" gear="5" ctrlrange="-1 1"/>
    {second}
  </actuator>
</mujoco>
"""


def _point_mass(tmp_path: Path, second: str) -> TaskConfig:
    path = tmp_path / "puck.xml"
    path.write_text(POINT_MASS.format(second=second))
    return REACHER.replace(
        name="puck", model_file=str(path), goal_name="center", obs_site="center",
        goal_sampler=BoxSampler((-0.5, -0.5), (0.5, 0.5)),
    )


def test_any_mjcf_and_config_make_an_env(tmp_path: Path) -> None:
    """A model the project never saw: slide joints driven by motors (effort actions in N)."""
    env = GoalReachEnv(
        _point_mass(tmp_path, '<motor name="y" joint="y" gear="2" ctrlrange="-0.5 1"/>')
    )
    action = env.spec.action
    assert action.kind == "effort" and action.joints == ("x", "y")
    assert action.low == (-5.0, -1.0) and action.high == (5.0, 2.0)
    assert action.offset == (0.0, 0.5) and action.scale == (5.0, 1.5)
    # joint_pos, joint_vel, site_pos and last_action, the reacher's fields.
    assert env.spec.obs_dim == 2 + 2 + 3 + 2 and env.spec.goal_dim == 2
    assert env.spec.goal.low == (-0.5, -0.5)
    assert list(map(float, env.action_to_ctrl(jnp.array([1.0, -1.0])))) == [1.0, -0.5]
    # A motor starts pushing nothing: last_action is 0 N normalized, (0 - offset) / scale.
    state = jax.jit(env.reset)(jax.random.key(0))
    np.testing.assert_allclose(state.obs[-2:], [0.0, -0.5 / 1.5], atol=1e-6)
    state = jax.jit(env.step)(state, jnp.array([0.25, -2.0]))
    np.testing.assert_allclose(state.obs[-2:], [0.25, -1.0], atol=1e-6)


def test_mixed_servos_and_motors_are_refused(tmp_path: Path) -> None:
    config = _point_mass(tmp_path, '<position name="y" joint="y" kp="10" ctrlrange="-1 1"/>')
    with pytest.raises(ConfigError, match=r"TaskConfig\.actuated_joints: .*all position servos"):
        GoalReachEnv(config)


def test_actuator_without_ctrlrange_is_refused(tmp_path: Path) -> None:
    config = _point_mass(tmp_path, '<motor name="y" joint="y" gear="2"/>')
    with pytest.raises(ConfigError, match=r"TaskConfig\.actuated_joints: actuator 'y' has no"):
        GoalReachEnv(config)
