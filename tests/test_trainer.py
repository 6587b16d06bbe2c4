"""The training loop: run directory, validation, CLI, divergence, resume, learning.

`PointMass` is a pure-jax stand-in with the GoalReachEnv contract, so the loop is tested without
MuJoCo compile times; `test_reacher_*` exercise the real quickstart task.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import struct

from crl.core.oscillation import FLIP_MIN, action_flips, oscillation
from crl.core.spec import ActionSpec, Field, GoalSpec, PolicySpec, Provenance
from crl.core.usage import ConfigError
from crl.train import cli
from crl.train.agent import EVAL_STREAM
from crl.train.checkpoint import (
    CHECKPOINTS,
    CheckpointError,
    checkpoint_steps,
    load_run,
    prepare_run_dir,
)
from crl.train.config import (
    PRESETS,
    RUN_FORMAT,
    SIDE_FIELDS,
    AlgoConfig,
    EvalConfig,
    NetworkConfig,
    ReplayConfig,
    TrainConfig,
    preset,
    validate,
)
from crl.train.evaluate import (
    evaluation_key,
    make_evaluator,
    paper_score,
    reset_episodes,
    summarize,
)
from crl.train.networks import Actor
from crl.train.trainer import DivergedError, train


@struct.dataclass
class PointState:
    data: dict
    obs: jax.Array
    goal: jax.Array
    achieved_goal: jax.Array
    reward: jax.Array
    success: jax.Array
    done: jax.Array
    t: jax.Array
    rng: jax.Array
    clock: jax.Array  # steps this env slot has taken over all episodes (drives `nan_after`)


class PointMass:
    """A pure-jax stand-in with the GoalReachEnv contract: a point in [-1, 1]² that moves by
    0.2 · action per step towards a goal drawn uniformly in the same square. With `fall_at`, a
    step that ends with a coordinate beyond ±fall_at terminates the episode early (it "falls")."""

    def __init__(self, episode_length: int = 20, nan_after: int | None = None,
                 fall_at: float | None = None) -> None:
        self.episode_length = episode_length
        self.nan_after = nan_after
        self.fall_at = fall_at
        self.config = None
        self.spec = PolicySpec(
            task="point_mass",
            observation=(Field("pos", 2), Field("vel", 2)),
            goal=GoalSpec(fields=(Field("xy", 2),), frame="world", low=(-1.0, -1.0),
                          high=(1.0, 1.0)),
            action=ActionSpec(size=2, joints=("x", "y"), kind="effort", scale=(1.0, 1.0),
                              offset=(0.0, 0.0), low=(-1.0, -1.0), high=(1.0, 1.0)),
            control_hz=10.0,
            success_radius=0.1,
            provenance=Provenance(env="point_mass", robot_model_sha256="0" * 64),
        )

    def _observe(self, pos, vel, goal, t, rng, clock, done):
        obs = jnp.concatenate([pos, vel])
        if self.nan_after is not None:
            obs = jnp.where(clock >= self.nan_after, jnp.nan, obs)
        dist = jnp.linalg.norm(pos - goal)
        success = dist <= self.spec.success_radius
        return PointState(
            data={"pos": pos, "vel": vel}, obs=obs, goal=goal, achieved_goal=pos,
            reward=success.astype(jnp.float32), success=success, done=done, t=t, rng=rng,
            clock=clock,
        )

    def reset(self, rng, evaluation=False):  # one goal set: evaluation draws it too
        rng, k_pos, k_goal = jax.random.split(rng, 3)
        pos = jax.random.uniform(k_pos, (2,), minval=-1.0, maxval=1.0)
        goal = jax.random.uniform(k_goal, (2,), minval=-1.0, maxval=1.0)
        return self._observe(pos, jnp.zeros(2), goal, jnp.int32(0), rng, jnp.int32(0),
                             jnp.bool_(False))

    def step(self, state, action):
        vel = 0.2 * jnp.clip(action, -1.0, 1.0)
        pos = jnp.clip(state.data["pos"] + vel, -1.0, 1.0)
        t = state.t + 1
        done = t >= self.episode_length
        if self.fall_at is not None:
            done = done | (jnp.abs(pos).max() > self.fall_at)
        return self._observe(pos, vel, state.goal, t, state.rng, state.clock + 1, done)

    def reset_if_done(self, state):
        fresh = self.reset(state.rng).replace(clock=state.clock)
        return jax.tree.map(lambda f, s: jnp.where(state.done, f, s), fresh, state)


TESTS = Path(__file__).resolve().parent


def tiny_config(**changes) -> TrainConfig:
    """Sizes chosen not to divide one another: 30 envs, 7-step unrolls, batch 100, 23-step
    episodes, 38 SGD steps per iteration (env_steps_per_update 5.5)."""
    config = TrainConfig(
        task="point_mass",
        seed=0,
        total_steps=30 * 7 * 40,
        network=NetworkConfig(depth=4, width=64, repr_dim=16),
        algo=AlgoConfig(batch_size=100),
        replay=ReplayConfig(num_envs=30, unroll_length=7, env_steps_per_update=5.5,
                            buffer_steps=300, min_replay_steps=14),
        eval=EvalConfig(eval_every=30 * 7 * 10, eval_episodes=64, held_out=False),
        keep_checkpoints=2,
        log_every=4,
    )
    return dataclasses.replace(config, **changes)


@pytest.fixture(scope="module")
def point_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("runs") / "point"
    result = train(tiny_config(), run_dir, env=PointMass(episode_length=23), progress=False)
    return run_dir, result


def test_run_directory_holds_config_spec_eval_checkpoints_and_events(point_run) -> None:
    run_dir, result = point_run
    config = tiny_config()
    assert result.env_steps == config.iterations * config.env_steps_per_iteration
    stored = json.loads((run_dir / "config.json").read_text())
    assert TrainConfig.from_dict(stored) == config
    assert stored["derived"]["sgd_steps_per_iteration"] == 38

    spec = json.loads((run_dir / "spec.json").read_text())
    assert spec["network"] == {"depth": 4, "width": 64, "repr_dim": 16, "residual": True}
    assert spec["provenance"]["train_step"] == result.env_steps

    evaluations = json.loads((run_dir / "eval.json").read_text())["evaluations"]
    assert [e["env_steps"] for e in evaluations] == [0, 2100, 4200, 6300, 8400]
    assert set(evaluations[0]["train"]) >= {"success_rate", "time_at_goal",
                                             "final_distance_median"}

    steps = checkpoint_steps(run_dir)
    best = max(evaluations, key=lambda e: e["train"]["time_at_goal"])["env_steps"]
    assert steps == sorted({6300, 8400, best})  # the last 2 and the best
    assert list((run_dir / "tb").glob("events.*"))
    assert (run_dir / "learning_curve.png").stat().st_size > 10_000


def test_load_run_gives_params_the_actor_can_apply(point_run) -> None:
    run_dir, result = point_run
    run = load_run(run_dir)
    assert run.step == result.env_steps
    assert set(run.params) == {"actor", "sa_encoder", "g_encoder"}
    assert run.spec.network is not None and run.spec.network.depth == 4
    assert run.spec.provenance.train_step == run.step
    actor = Actor(NetworkConfig(depth=4, width=64, repr_dim=16), run.spec.act_dim)
    mean, _ = actor.apply({"params": run.params["actor"]}, np.zeros((1, 4)), np.zeros((1, 2)))
    assert mean.shape == (1, 2)
    for leaf, trained in zip(jax.tree.leaves(run.params),
                             jax.tree.leaves(result.state.agent.params), strict=True):
        np.testing.assert_array_equal(leaf, trained)
    with pytest.raises(CheckpointError, match="no checkpoint at step 1"):
        load_run(run_dir, step=1)
    with pytest.raises(CheckpointError, match="not a training run"):
        load_run(run_dir / "nowhere")


def test_training_improves_over_the_untrained_policy(point_run) -> None:
    _, result = point_run
    first, last = result.evaluations[0]["train"], result.evaluations[-1]["train"]
    assert first["success_rate"] < 0.3
    assert last["success_rate"] > first["success_rate"] + 0.4
    assert last["final_distance_median"] < first["final_distance_median"]


def test_existing_run_needs_resume_and_resume_refuses_a_changed_config(point_run) -> None:
    run_dir, _ = point_run
    with pytest.raises(ConfigError, match="already holds a run; pass --resume"):
        prepare_run_dir(run_dir, tiny_config(), resume=False)
    with pytest.raises(ConfigError, match=r"^depth: .* started with 4, not 8"):
        prepare_run_dir(run_dir, tiny_config(network=NetworkConfig(depth=8, width=64,
                                                                   repr_dim=16)), resume=True)
    # A preset that changed since the run started (the reacher's input_norm): the message says
    # what to set back, as no flag of the user's changed.
    normed = NetworkConfig(depth=4, width=64, repr_dim=16, input_norm=True)
    with pytest.raises(ConfigError, match=r"^input_norm: .* started with False, not True; to "
                                          r"resume it, set input_norm back to False \("):
        prepare_run_dir(run_dir, tiny_config(network=normed), resume=True)


def test_held_out_evaluation_and_no_residual_reach_the_run(tmp_path) -> None:
    """`--no-residual` trains the ablation and says so in spec.json; a held-out env adds its
    own figures to every evaluation. The directory already holds the config.json of a run that
    died before its first checkpoint: that is no run to protect, so training starts in place."""
    run_dir = tmp_path / "ablation"
    run_dir.mkdir()
    (run_dir / "config.json").write_text("{}")
    config = tiny_config(
        total_steps=30 * 7 * 4,
        network=NetworkConfig(depth=4, width=64, repr_dim=16, residual=False),
        eval=EvalConfig(eval_every=30 * 7 * 2, eval_episodes=16, held_out=True),
    )
    result = train(config, run_dir, env=PointMass(episode_length=23),
                   held_out_env=PointMass(episode_length=23), progress=False)
    spec = json.loads((run_dir / "spec.json").read_text())
    assert spec["network"]["residual"] is False
    assert json.loads((run_dir / "config.json").read_text())["network"]["residual"] is False
    evaluations = json.loads((run_dir / "eval.json").read_text())["evaluations"]
    assert len(evaluations) == 3 and all({"train", "held_out"} <= set(e) for e in evaluations)
    assert result.evaluations == evaluations
    with pytest.raises(ConfigError, match="no held-out environment given"):
        train(config, tmp_path / "other", env=PointMass(episode_length=23), progress=False)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"network": NetworkConfig(depth=6)}, r"^depth: 6 is not a positive multiple of 4.*use"),
        ({"network": NetworkConfig(actor_depth=2)},
         r"^actor_depth: 2 is not a positive multiple of 4.*use e\.g\. 4 or 8$"),
        ({"network": NetworkConfig(critic_depth=0)}, r"^critic_depth: 0 is not a positive"),
        ({"network": NetworkConfig(actor_width=0)}, r"^actor_width: must be a positive integer"),
        ({"network": NetworkConfig(critic_width=-8)}, r"^critic_width: must be a positive"),
        ({"algo": AlgoConfig(batch_size=10_000)}, r"^batch_size: 10000 is larger than the replay"),
        ({"task": "nope"}, r"^task: 'nope' is not a known task; choose one of reacher"),
        ({"algo": AlgoConfig(gamma=1.0)}, r"^gamma: must be in \(0, 1\)"),
        ({"algo": AlgoConfig(action_rate_penalty=-0.1)}, r"^action_rate_penalty: must be >= 0"),
        ({"total_steps": 10}, r"^total_steps: 10 is less than one iteration"),
    ],
)
def test_config_validation_names_the_field(changes, message, tmp_path) -> None:
    config = tiny_config(**changes)
    with pytest.raises(ConfigError, match=message):
        validate(config, ("reacher", "ant", "point_mass"))
    if "task" not in changes:
        with pytest.raises(ConfigError, match=message):  # before any env, compile or run dir
            train(config, tmp_path / "run", env=PointMass())
        assert not (tmp_path / "run").exists()


def test_presets_are_valid_and_paper_is_table_2() -> None:
    for config in PRESETS.values():
        validate(dataclasses.replace(config, task="reacher"), ("reacher",))
    p = PRESETS["paper"]
    assert (p.replay.num_envs, p.algo.batch_size, p.replay.unroll_length) == (512, 512, 62)
    assert p.sgd_steps_per_iteration == 794  # 512 envs × 62 steps / 40: UTD 1:40
    assert (p.replay.buffer_steps, p.replay.min_replay_steps) == (10_000, 1_000)
    a = p.algo
    assert (a.gamma, a.logsumexp_penalty, a.entropy_scale) == (0.99, 0.1, 0.5)
    assert a.actor_lr == a.critic_lr == a.alpha_lr == 3e-4
    assert (p.network.width, p.network.repr_dim, p.network.residual) == (256, 64, True)


def test_lr_decay_is_a_cosine_over_the_runs_sgd_steps() -> None:
    """lr_decay 1 keeps the paper's constant rate (no schedule in the optimiser); below 1 the
    actor's and critic's rates fall along a cosine from the rate at the first SGD step to that
    fraction of it at the run's last, counted by the optimiser (so a resume keeps its place)."""
    from crl.train.agent import learning_rate

    config = preset("quick", "reacher", total_steps=1_200_000)
    assert config.algo.lr_decay == 0.1 and PRESETS["paper"].algo.lr_decay == 1.0
    assert config.sgd_steps_total == (config.iterations - config.prefill_iterations) * 64
    constant = dataclasses.replace(config, algo=dataclasses.replace(config.algo, lr_decay=1.0))
    assert learning_rate(3e-4, constant) == 3e-4
    schedule = learning_rate(3e-4, config)
    assert callable(schedule)
    rates = [float(schedule(k)) for k in np.linspace(0, config.sgd_steps_total, 9)]
    assert rates[0] == pytest.approx(3e-4) and rates[-1] == pytest.approx(3e-5)
    assert rates[4] == pytest.approx(0.5 * (3e-4 + 3e-5))  # halfway down a cosine
    assert (np.diff(rates) < 0).all()
    with pytest.raises(ConfigError, match="lr_decay: must be in"):
        validate(dataclasses.replace(config, algo=dataclasses.replace(config.algo, lr_decay=0.0)))


# The paper's env steps per task (Figure 1's x-axes; Table 7: "100M-400M, varying across
# tasks"); tasks outside its ten get its code's default, 100M.
PAPER_BUDGETS = {
    "paper_humanoid": 100_000_000,
    "paper_ant_big_maze": 100_000_000,
    "paper_ant_u4_maze": 100_000_000,
    "paper_ant_u5_maze": 400_000_000,
    "paper_ant_hardest_maze": 200_000_000,
    "paper_arm_push_easy": 100_000_000,
    "paper_arm_push_hard": 100_000_000,
    "paper_arm_binpick_hard": 100_000_000,
    "paper_humanoid_u_maze": 400_000_000,
    "paper_humanoid_big_maze": 400_000_000,
    "paper_ant": 100_000_000,
    "paper_ant_u_maze": 100_000_000,
    "humanoid": 100_000_000,
    "reacher": 100_000_000,
}


@pytest.mark.parametrize(("task", "steps"), PAPER_BUDGETS.items())
def test_paper_preset_is_the_papers_setup_value_for_value(task: str, steps: int) -> None:
    """Every value `--preset paper` sets: Table 2 (Table 7 of arXiv v4), no domain
    randomization and no held-out evaluation (the paper has none), the task's step budget, and
    evaluation as the paper's code runs it: 100 evaluations a run, 128 episodes each."""
    config = preset("paper", task)
    got = config.to_dict()
    derived = got.pop("derived")
    assert got == {
        "format": RUN_FORMAT,
        "task": task,
        "seed": 0,
        "total_steps": steps,
        "dr": "off",
        "physics": "jax",
        "network": {"depth": 64, "width": 256, "repr_dim": 64, "residual": True,
                    "dtype": "fp32", "input_norm": False, **dict.fromkeys(SIDE_FIELDS)},
        "algo": {
            "batch_size": 512,
            "gamma": 0.99,
            "logsumexp_penalty": 0.1,
            "entropy_scale": 0.5,
            "actor_lr": 3e-4,
            "critic_lr": 3e-4,
            "alpha_lr": 3e-4,
            "lr_decay": 1.0,
            "action_rate_penalty": 0.0,
            "temporal_penalty": 0.0,
            "spatial_penalty": 0.0,
            "spatial_sigma": 0.05,
        },
        "replay": {
            "num_envs": 512,
            "unroll_length": 62,
            "env_steps_per_update": 40.0,
            "buffer_steps": 10_000,
            "min_replay_steps": 1_000,
        },
        "eval": {"eval_every": steps // 100, "eval_episodes": 128, "held_out": False},
        "keep_checkpoints": 3,
        "log_every": 20,
        "learners": [],
    }
    assert derived["sgd_steps_per_iteration"] == 794
    validate(config)
    assert preset("paper", task, seed=4).seed == 4


def test_the_paper_preset_covers_every_paper_task() -> None:
    from crl.sim.tasks import TASKS

    paper_tasks = [t for t in TASKS if t.startswith("paper_")]
    assert paper_tasks
    for task in paper_tasks:
        assert preset("paper", task).total_steps == PAPER_BUDGETS[task], task


@pytest.fixture
def configs_trained(monkeypatch: pytest.MonkeyPatch) -> list[TrainConfig]:
    """The configs `crl-train` would train, in order: its trainer is replaced by one that
    records the config and stops as Ctrl-C does (exit 130)."""
    seen: list[TrainConfig] = []

    def fake_train(config, out, resume=False, devices=None):
        seen.append(config)
        raise KeyboardInterrupt

    monkeypatch.setattr("crl.train.trainer.train", fake_train)
    return seen


def test_cli_paper_preset_takes_the_tasks_budget_and_flags_still_win(
        configs_trained, tmp_path) -> None:
    seen = configs_trained
    out = ["--out", str(tmp_path / "r")]
    assert cli.main(["paper_ant_u5_maze", *out]) == 130  # --preset paper is the default
    assert cli.main(["--total-steps", "1000000", "paper_ant_u5_maze", "--dr", "train", *out]) == 130
    paper, changed = seen
    assert (paper.total_steps, paper.eval.eval_every, paper.dr) == (400_000_000, 4_000_000, "off")
    assert paper == preset("paper", "paper_ant_u5_maze")
    assert (changed.total_steps, changed.dr) == (1_000_000, "train")


def test_a_tasks_preset_changes_reach_its_runs_and_its_help(configs_trained, tmp_path,
                                                            capsys) -> None:
    """`arm_reach`'s quick preset has its own spatial weight (TASK_PRESET_CHANGES), the
    reacher's its standardised inputs and its own spatial weight, each keeping the rest of the
    preset; a flag still wins, and `crl-train arm_reach --preset quick --help` shows the arm's
    default, `--help` without a task the preset's."""
    from crl.train.config import TASK_PRESET_CHANGES

    arm = preset("quick", "arm_reach")
    assert TASK_PRESET_CHANGES[("quick", "arm_reach")] == {"algo": {"spatial_penalty": 100.0}}
    assert arm == dataclasses.replace(
        PRESETS["quick"], task="arm_reach",
        algo=dataclasses.replace(PRESETS["quick"].algo, spatial_penalty=100.0))
    assert not PRESETS["quick"].network.input_norm and not arm.network.input_norm
    assert preset("quick", "reacher") == dataclasses.replace(
        PRESETS["quick"], task="reacher",
        network=dataclasses.replace(PRESETS["quick"].network, input_norm=True),
        algo=dataclasses.replace(PRESETS["quick"].algo, spatial_penalty=30.0))
    assert preset("quick", "reacher", total_steps=1_200_000).network.input_norm
    assert preset("quick", "reacher", total_steps=1_200_000).algo.spatial_penalty == 30.0
    assert preset("quick", "arm_reach", total_steps=1_200_000).algo.spatial_penalty == 100.0
    validate(preset("quick", "arm_reach"), ("arm_reach",))
    seen = configs_trained
    out = ["--out", str(tmp_path / "r")]
    assert cli.main(["arm_reach", "--preset", "quick", *out]) == 130
    assert cli.main(["arm_reach", "--preset", "quick", "--spatial-penalty", "5", *out]) == 130
    arm, changed = seen
    assert arm == preset("quick", "arm_reach") and changed.algo.spatial_penalty == 5.0

    def default_shown(argv: list[str]) -> str:
        with pytest.raises(SystemExit) as e:
            cli.main(argv)
        out = capsys.readouterr().out
        assert e.value.code == 0, out
        flag = out[out.index("--spatial-penalty"):]
        return re.search(r"\(default: ([\d.]+)\)", flag).group(1)

    assert default_shown(["arm_reach", "--preset", "quick", "--help"]) == "100.0"
    assert cli.main(["reacher", "--preset", "quick", "--no-input-norm", *out]) == 130
    changed = seen[-1]
    assert changed == dataclasses.replace(preset("quick", "reacher"),
                                          network=PRESETS["quick"].network)
    assert default_shown(["--help", "--preset", "quick", "reacher"]) == "30.0"
    assert default_shown(["--preset", "quick", "--help"]) == "10.0"


def test_held_out_is_no_training_dr() -> None:
    with pytest.raises(ConfigError, match=r"^dr: 'held-out' is not 'off' or 'train'"):
        validate(tiny_config(dr="held-out"))


def test_config_json_holds_its_format_and_every_field() -> None:
    """config.json carries the run format and every field (unset actor/critic sizes as null, no
    learners as []) and reads back as the same config; one with overrides records them."""
    stored = json.loads(json.dumps(tiny_config().to_dict()))
    assert stored["format"] == RUN_FORMAT and stored["learners"] == []
    assert {k: stored["network"][k] for k in SIDE_FIELDS} == dict.fromkeys(SIDE_FIELDS)
    config = TrainConfig.from_dict(stored)
    assert config == tiny_config() and config.to_dict() == stored
    n = config.network
    assert n.actor == n.critic == n and not n.overrides()
    apart = tiny_config(network=NetworkConfig(depth=8, width=64, repr_dim=16, actor_depth=4,
                                              critic_width=32))
    stored = json.loads(json.dumps(apart.to_dict()))
    assert stored["network"] == {"depth": 8, "width": 64, "repr_dim": 16, "residual": True,
                                 "dtype": "fp32", "input_norm": False, "actor_depth": 4,
                                 "actor_width": None,
                                 "critic_depth": None, "critic_width": 32}
    assert TrainConfig.from_dict(stored) == apart
    a, c = apart.network.actor, apart.network.critic
    assert (a.depth, a.width, c.depth, c.width) == (4, 64, 8, 32)


def test_actor_and_critic_sizes_train_record_and_export(tmp_path) -> None:
    """--actor-depth 8 --critic-depth 4 --critic-width 32: the networks take their own sizes,
    config.json records the overrides, spec.json (and so the export) the actor's shape with the
    critic's beside it; the run exports and its ONNX actor matches the trained one."""
    from crl.export.onnx_export import export_actor
    from crl.runtime.ort_backend import OrtPolicy

    network = NetworkConfig(depth=4, width=64, repr_dim=16, actor_depth=8, critic_width=32)
    config = tiny_config(total_steps=30 * 7 * 4, network=network,
                         eval=EvalConfig(eval_every=30 * 7 * 2, eval_episodes=16,
                                         held_out=False))
    run_dir = tmp_path / "apart"
    train(config, run_dir, env=PointMass(episode_length=23), progress=False)
    stored = json.loads((run_dir / "config.json").read_text())
    assert (stored["network"]["actor_depth"], stored["network"]["critic_width"]) == (8, 32)
    assert TrainConfig.from_dict(stored) == config
    spec = json.loads((run_dir / "spec.json").read_text())
    assert spec["network"] == {"depth": 8, "width": 64, "repr_dim": 16, "residual": True,
                               "critic_depth": 4, "critic_width": 32}
    run = load_run(run_dir)
    shapes = {k: run.params[k]["trunk"]["blocks"]["dense_0"]["kernel"].shape for k in run.params}
    assert shapes == {"actor": (2, 64, 64), "sa_encoder": (1, 32, 32), "g_encoder": (1, 32, 32)}
    assert run.spec.network is not None and run.spec.network.critic_shape == (4, 32)
    path = export_actor(run.params, run.spec, tmp_path / "apart.onnx", critic=True).path
    obs, goal = np.zeros((3, 4), np.float32), np.full((3, 2), 0.5, np.float32)
    actor = Actor(network, run.spec.act_dim)
    mean, _ = actor.apply({"params": run.params["actor"]}, obs, goal)
    np.testing.assert_allclose(OrtPolicy(path).act(obs, goal), np.tanh(mean), atol=1e-5)
    with pytest.raises(ConfigError, match=r"^actor_depth: .* started with 8, not None"):
        shared = dataclasses.replace(network, actor_depth=None)
        prepare_run_dir(run_dir, dataclasses.replace(config, network=shared), resume=True)


def _expected_norm(obs: np.ndarray, goals: np.ndarray, spec: PolicySpec
                   ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """What `standardize_inputs` should set from rows [time, env, dim], in numpy (float64)."""

    def stats(x: np.ndarray, fields: dict[str, slice]) -> tuple[np.ndarray, np.ndarray]:
        x = x.reshape(-1, x.shape[-1]).astype(np.float64)
        scale = np.ones(x.shape[-1])
        for part in fields.values():
            scale[part] = 1.0 / np.sqrt(np.mean(x[:, part].var(axis=0)))
        return x.mean(axis=0), scale

    (obs_shift, obs_scale), (goal_shift, goal_scale) = (
        stats(obs, spec.observation_slices()), stats(goals, spec.goal_slices()))
    act = spec.act_dim
    return {"actor": (np.concatenate([obs_shift, goal_shift]),
                      np.concatenate([obs_scale, goal_scale])),
            "sa_encoder": (np.concatenate([obs_shift, np.zeros(act)]),
                           np.concatenate([obs_scale, np.ones(act)])),
            "g_encoder": (goal_shift, goal_scale)}


def _norms(state) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    return {k: (np.array(v["input_norm"]["shift"]), np.array(v["input_norm"]["scale"]))
            for k, v in state.agent.params.items()}


def test_input_norm_is_set_once_from_the_prefill_and_the_run_exports_it(tmp_path) -> None:
    """`--input-norm`: the identity through the prefill; the first training iteration sets every
    network's shift and scale from the rows the buffer holds, before its SGD steps (each
    component's mean; one scale an observation field and for the goal, from the achieved goals);
    no later iteration changes them; the exported actor is the trained one."""
    from crl.export.onnx_export import export_actor
    from crl.runtime.ort_backend import OrtPolicy
    from crl.train.agent import init_state, make_iteration, make_setup

    network = NetworkConfig(depth=4, width=64, repr_dim=16, input_norm=True)
    config = tiny_config(network=network)  # 7-step unrolls, training from 14 rows
    env = PointMass(episode_length=23)
    setup = make_setup(config, env)
    iteration = make_iteration(setup)
    state = init_state(setup)
    identity = {k: (np.zeros(n), np.ones(n)) for k, n in
                (("actor", 6), ("sa_encoder", 6), ("g_encoder", 2))}

    def assert_norms(got, want) -> None:
        assert got.keys() == want.keys()
        for k in got:
            for g, w in zip(got[k], want[k], strict=True):
                np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6, err_msg=k)

    state, metrics = iteration(state)  # the prefill: 7 rows, no SGD step
    assert not metrics["trained"]
    assert_norms(_norms(state), identity)
    state, _ = iteration.collect(state)
    rows = 2 * config.replay.unroll_length
    want = _expected_norm(np.asarray(state.buffer.data.obs[:rows]),
                          np.asarray(state.buffer.data.next_achieved[:rows]), env.spec)
    assert not np.allclose(want["actor"][1], 1.0)  # the data's spread is not 1: a real check
    state, metrics = iteration.learn(state)
    assert metrics["trained"]
    assert_norms(_norms(state), want)
    held = _norms(state)
    for _ in range(2):
        state, _ = iteration(state)
    for k, (shift, scale) in _norms(state).items():
        np.testing.assert_array_equal(shift, held[k][0])
        np.testing.assert_array_equal(scale, held[k][1])

    run_dir = tmp_path / "normed"
    config = tiny_config(network=network, total_steps=30 * 7 * 4,
                         eval=EvalConfig(eval_every=30 * 7 * 2, eval_episodes=16,
                                         held_out=False))
    train(config, run_dir, env=env, progress=False)
    assert json.loads((run_dir / "config.json").read_text())["network"]["input_norm"] is True
    run = load_run(run_dir)
    assert not np.allclose(run.params["actor"]["input_norm"]["scale"], 1.0)
    path = export_actor(run.params, run.spec, tmp_path / "normed.onnx").path
    obs = np.asarray(jax.random.uniform(jax.random.PRNGKey(3), (5, 4), minval=-1, maxval=1))
    goal = np.full((5, 2), 0.5, np.float32)
    mean, _ = Actor(network, run.spec.act_dim).apply({"params": run.params["actor"]}, obs, goal)
    np.testing.assert_allclose(OrtPolicy(path).act(obs, goal), np.tanh(mean), atol=1e-5)
    # What rebuilds the networks from a run's spec and parameters (crl-train eval, analyze,
    # robustness's JAX backend, bench/hold.py) builds them with the norm: the same actor, and
    # the exported file's critic readout.
    from crl.testbed.jax_backend import JaxPolicy
    from crl.train.networks import network_config

    rebuilt = network_config(run.spec.network, run.params)
    assert (rebuilt.actor, rebuilt.critic) == (network, network)
    critic_path = export_actor(run.params, run.spec, tmp_path / "critic.onnx", critic=True).path
    want = OrtPolicy(critic_path).run(obs, goal)
    got = JaxPolicy(run.params, run.spec).run(obs, goal)
    for name in ("action", "phi", "psi", "distance"):
        np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-5, err_msg=name)


def test_a_constant_field_keeps_scale_1() -> None:
    """A field that never varies (a coordinate fixed by the model, a sensor stuck in the prefill)
    keeps scale 1: dividing by its spread would blow its mean's float rounding up to a unit
    input, or divide by zero."""
    from crl.train.agent import _field_statistics

    x = np.zeros((4, 3, 5), np.float32)
    x[..., 0:2] = 0.02  # constant, and not exactly representable
    x[..., 2:5] = np.random.default_rng(0).normal(0.0, 0.1, (4, 3, 3))
    x[..., 4] = 7.0  # constant inside a varying field: the field's scale is its spread's
    held = jnp.array([True, True, True, False])
    mean, scale = _field_statistics(jnp.asarray(x), held, {"a": slice(0, 2), "b": slice(2, 5)})
    np.testing.assert_allclose(mean[:2], 0.02, rtol=1e-6)
    np.testing.assert_array_equal(scale[:2], [1.0, 1.0])
    rows = x[:3, :, 2:5].reshape(-1, 3).astype(np.float64)
    np.testing.assert_allclose(scale[2:5], 1.0 / np.sqrt(np.mean(rows.var(axis=0))), rtol=1e-5)


def test_oscillation_counts_reversals_near_the_goal_only() -> None:
    """Episode 0 alternates (a period-2 cycle), 1 settles, 2 jitters by changes below FLIP_MIN, 3
    alternates away from the goal; one action component each, 6 steps."""
    t = np.arange(6)
    actions = np.stack([0.3 * (-1.0) ** t, np.full(6, 0.2), 0.4 * FLIP_MIN * (-1.0) ** t,
                        0.3 * (-1.0) ** t], axis=1)[..., None]
    near = np.stack([np.ones(6, bool)] * 3 + [np.zeros(6, bool)], axis=1)
    flips, chances = action_flips(actions, near)
    np.testing.assert_array_equal(flips, [4, 0, 0, 0])
    np.testing.assert_array_equal(chances, [4, 4, 4, 0])
    assert oscillation(flips, chances) == pytest.approx(4 / 12)
    assert oscillation(np.zeros(2), np.zeros(2)) == 0.0


def test_paper_score_is_the_mean_time_at_goal_of_the_last_five_evaluations() -> None:
    evaluations = [{"env_steps": i, "train": {"time_at_goal": float(i)}} for i in range(7)]
    evaluations[3]["held_out"] = {"time_at_goal": 9.0}
    assert paper_score(evaluations) == np.mean([2, 3, 4, 5, 6])
    assert paper_score(evaluations, "held_out") == 9.0
    assert paper_score([]) is None


def test_each_evaluation_draws_fresh_goals(point_run) -> None:
    """Every evaluation has its own key (recorded in eval.json, derived from the seed and the
    step), so two evaluations see different goals; re-running the last evaluation with its
    recorded key reproduces its figures, and eval.json reports the paper's score."""
    run_dir, _ = point_run
    data = json.loads((run_dir / "eval.json").read_text())
    evaluations = data["evaluations"]
    env, episodes = PointMass(episode_length=23), tiny_config().eval.eval_episodes
    run_key = jax.random.fold_in(jax.random.PRNGKey(0), EVAL_STREAM)
    goals = []
    for e in evaluations:
        key = jnp.asarray(e["eval_key"], jnp.uint32)
        np.testing.assert_array_equal(key, evaluation_key(run_key, e["env_steps"]))
        goals.append(np.asarray(reset_episodes(env, key, episodes).goal))
    for i in range(len(goals)):
        for j in range(i):
            assert not np.allclose(goals[i], goals[j]), (i, j)
    run = load_run(run_dir)
    last = evaluations[-1]
    assert last["env_steps"] == run.step
    actor = Actor(NetworkConfig(depth=4, width=64, repr_dim=16), 2)
    again = make_evaluator(env, actor, episodes)(
        run.params["actor"], jnp.asarray(last["eval_key"], jnp.uint32)
    )
    assert summarize(jax.device_get(again), env.episode_length) == last["train"]
    assert data["paper_score"] == {"train": paper_score(evaluations)}


def test_cli_user_errors_are_one_line_and_exit_2(tmp_path, capsys) -> None:
    for argv in (["reacher", "--depth", "6", "--out", str(tmp_path / "a")],
                 ["no_such_task", "--out", str(tmp_path / "b")],
                 ["eval", "--run", str(tmp_path / "missing")]):
        assert cli.main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("crl-train: error: ") and "\n" not in err


def test_cli_flags_reach_the_config(monkeypatch, tmp_path) -> None:
    seen = {}

    def fake_train(config, out, resume=False, devices=None):
        seen.update(config=config, out=out, resume=resume, devices=devices)
        raise KeyboardInterrupt

    monkeypatch.setattr("crl.train.trainer.train", fake_train)
    argv = ["reacher", "--preset", "quick", "--depth", "8", "--width", "32", "--num-envs", "7",
            "--batch-size", "9", "--total-steps", "1234", "--seed", "3", "--dr", "off",
            "--no-residual", "--out", str(tmp_path / "r")]
    assert cli.main(argv) == 130
    c = seen["config"]
    assert (c.task, c.seed, c.total_steps, c.dr) == ("reacher", 3, 1234, "off")
    # input_norm: the reacher's quick preset (TASK_PRESET_CHANGES)
    assert c.network == NetworkConfig(depth=8, width=32, repr_dim=64, residual=False,
                                      input_norm=True)
    assert (c.replay.num_envs, c.algo.batch_size) == (7, 9)
    assert c.replay.unroll_length == cli.PRESETS["quick"].replay.unroll_length
    assert seen["out"] == tmp_path / "r" and seen["devices"] is None  # all local devices


def test_cli_actor_and_critic_flags_override_depth_and_width(monkeypatch, tmp_path) -> None:
    """--depth/--width set both sides; --actor-*/--critic-* override one, and the default run
    directory names both depths when they differ."""
    seen = []

    def fake_train(config, out, resume=False, devices=None):
        seen.append((config.network, out))
        raise KeyboardInterrupt

    monkeypatch.setattr("crl.train.trainer.train", fake_train)
    monkeypatch.chdir(tmp_path)
    assert cli.main(["reacher", "--preset", "quick", "--depth", "8", "--width", "32"]) == 130
    assert cli.main(["reacher", "--preset", "quick", "--depth", "8", "--actor-depth", "4",
                     "--critic-width", "64", "--seed", "2"]) == 130
    (both, out_both), (apart, out_apart) = seen
    assert both == NetworkConfig(depth=8, width=32, repr_dim=64, input_norm=True)
    assert not both.overrides()
    assert out_both == Path("runs") / "reacher-d8-s0"
    assert apart.overrides() == {"actor_depth": 4, "critic_width": 64}
    assert (apart.actor.depth, apart.actor.width) == (4, 128)  # quick's width
    assert (apart.critic.depth, apart.critic.width) == (8, 64)
    assert out_apart == Path("runs") / "reacher-a4-c8-s2"


def test_non_finite_loss_stops_training_and_keeps_the_last_good_checkpoint(tmp_path) -> None:
    config = tiny_config(total_steps=30 * 7 * 30)
    env = PointMass(episode_length=23, nan_after=7 * 15)  # observations turn NaN mid-run
    with pytest.raises(DivergedError) as info:
        train(config, tmp_path / "run", env=env, progress=False)
    message = str(info.value)
    match = re.fullmatch(
        r"training stopped: (\w+) is nan at step (\d+); last good checkpoint: (\S+)", message
    )
    assert match, message
    assert int(match[2]) == 30 * 7 * 16  # the first iteration that collected NaN
    good = Path(match[3])
    assert good.name == "2100"
    run = load_run(tmp_path / "run")
    assert run.step == 2100
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(run.params))


_RUN_SCRIPT = """
import sys
sys.path.insert(0, {tests!r})
from pathlib import Path
from test_trainer import PointMass, tiny_config
from crl.train.trainer import train
train(tiny_config(), Path({out!r}), resume={resume}, env=PointMass(episode_length=23),
      progress=False)
"""


def _start(out: Path, resume: bool, cache: Path) -> subprocess.Popen:
    """The `point_run` fixture's run in a subprocess (sharing one compilation cache)."""
    script = _RUN_SCRIPT.format(tests=str(TESTS), out=str(out), resume=resume)
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "JAX_COMPILATION_CACHE_DIR": str(cache),
           "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}
    return subprocess.Popen([sys.executable, "-c", script], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


@pytest.mark.slow
def test_resume_after_sigkill_ends_bitwise_equal(point_run, tmp_path) -> None:
    """Kill -9 a run after its first checkpoint, resume it: it ends with the parameters and
    evaluations of the uninterrupted `point_run`, bit for bit."""
    whole, _ = point_run
    killed, cache = tmp_path / "killed", tmp_path / "jax_cache"
    first = tiny_config().eval.eval_every
    b = _start(killed, resume=False, cache=cache)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and b.poll() is None:
        if any(s >= first for s in checkpoint_steps(killed)):
            b.send_signal(signal.SIGKILL)
            break
        time.sleep(0.02)
    assert b.wait(60) == -signal.SIGKILL, b.stdout.read().decode()[-2000:]
    assert max(checkpoint_steps(killed)) < load_run(whole).step  # it really was cut short
    c = _start(killed, resume=True, cache=cache)
    assert c.wait(240) == 0, c.stdout.read().decode()[-2000:]
    end_whole, end_resumed = load_run(whole), load_run(killed)
    assert end_whole.step == end_resumed.step
    for x, y in zip(jax.tree.leaves(end_whole.params), jax.tree.leaves(end_resumed.params),
                    strict=True):
        np.testing.assert_array_equal(x, y)
    evals_whole = json.loads((whole / "eval.json").read_text())["evaluations"]
    evals_resumed = json.loads((killed / "eval.json").read_text())["evaluations"]
    assert [e["train"] for e in evals_whole] == [e["train"] for e in evals_resumed]


@pytest.mark.slow
def test_a_run_resumed_from_its_step_0_checkpoint_evaluates_step_0_once(tmp_path) -> None:
    """Resuming from the untrained policy's checkpoint keeps its evaluation and does not append
    it again (a second copy would move the paper score)."""
    import shutil

    config = tiny_config(total_steps=30 * 7, eval=EvalConfig(eval_every=10**9, eval_episodes=4,
                                                              held_out=False))
    run_dir = tmp_path / "run"
    env = PointMass(episode_length=23)
    train(config, run_dir, env=env, progress=False)
    end = config.env_steps_per_iteration
    assert checkpoint_steps(run_dir) == [0, end]
    shutil.rmtree(run_dir / CHECKPOINTS / str(end))  # as if killed after the first checkpoint
    train(config, run_dir, resume=True, env=env, progress=False)
    evaluations = json.loads((run_dir / "eval.json").read_text())["evaluations"]
    assert [e["env_steps"] for e in evaluations] == [0, end]


# ------------------------------------------------------------------------- early termination


def _held_in_order(buffer) -> tuple[np.ndarray, np.ndarray]:
    """The held rows' t and episode number, oldest first: [held, num_envs] each."""
    cap, written = buffer.data.t.shape[0], int(buffer.written)
    held = min(written, cap)
    order = (written - held + np.arange(held)) % cap
    return np.asarray(buffer.data.t)[order], np.asarray(buffer.episode)[order]


def _check_episode_index(buffer, episode_length: int) -> int:
    """Each column holds its env's steps in order (t counts up, and is 0 after any end) and the
    buffer opens an episode exactly where t is 0; returns how many episodes ended early."""
    t, episode = _held_in_order(buffer)
    prev, nxt = t[:-1], t[1:]
    assert ((nxt == prev + 1) | (nxt == 0)).all()
    np.testing.assert_array_equal(np.diff(episode, axis=0), (nxt == 0).astype(int))
    return int(((nxt == 0) & (prev + 1 < episode_length)).sum())


@pytest.fixture(scope="module")
def falling_point():
    """The tiny config's setup and compiled iteration on a PointMass that falls off its edges."""
    from crl.train.agent import make_iteration, make_setup

    setup = make_setup(tiny_config(), PointMass(episode_length=23, fall_at=0.8))
    return setup, make_iteration(setup)


def test_collect_gives_the_replay_the_episodes_that_end_early(falling_point) -> None:
    from crl.train.agent import init_state

    setup, iteration = falling_point
    env, state = setup.env, init_state(setup)
    terminated = []
    for _ in range(6):
        state, metrics = iteration(state)
        terminated.append(float(metrics["collect_terminated"]))
        assert np.isfinite(float(metrics["critic_loss"]))
    assert max(terminated) > 0
    assert _check_episode_index(state.buffer, env.episode_length) > 0


@struct.dataclass
class FallState:
    obs: jax.Array
    goal: jax.Array
    achieved_goal: jax.Array
    success: jax.Array
    done: jax.Array
    t: jax.Array
    fall: jax.Array  # the step that terminates this episode (0: none)


class Faller:
    """Always at its goal; episode i terminates after step `fall` (drawn 0..5 at reset, 0 =
    never), its achieved goal 0.01 further from the origin every step."""

    episode_length = 10
    # All the evaluator reads of a spec: the radius of its near-goal steps (the oscillation).
    spec = types.SimpleNamespace(success_radius=0.05)

    def reset(self, rng: jax.Array, evaluation: bool = False) -> FallState:
        fall = jax.random.randint(rng, (), 0, 6)
        zero = jnp.zeros(2)
        return FallState(jnp.zeros(1), zero, zero, jnp.bool_(True), jnp.bool_(False),
                         jnp.int32(0), fall)

    def step(self, state: FallState, action: jax.Array) -> FallState:
        t = state.t + 1
        done = (t >= self.episode_length) | ((state.fall > 0) & (t >= state.fall))
        return state.replace(achieved_goal=jnp.array([0.01, 0.0]) * t, done=done, t=t)


def test_evaluation_scores_a_terminated_episode_up_to_its_end() -> None:
    """Over the full horizon, a terminated episode's later steps score no time at goal (though
    its stand-in stays "at the goal"), and its final distance is the one at termination."""
    from crl.train.evaluate import make_evaluator

    env, episodes = Faller(), 32
    actor = Actor(NetworkConfig(depth=4, width=8, repr_dim=4), 1)
    params = actor.init(jax.random.key(0), jnp.zeros((1, 1)), jnp.zeros((1, 2)))["params"]
    key = jax.random.PRNGKey(3)
    result = jax.device_get(make_evaluator(env, actor, episodes)(params, key))
    fall = np.asarray(jax.vmap(env.reset)(jax.random.split(key, episodes)).fall)
    steps = np.where(fall > 0, fall, env.episode_length)
    assert set(fall.tolist()) >= {0, 1, 5}
    np.testing.assert_array_equal(result["time_at_goal"], steps)
    assert result["success"].all()
    np.testing.assert_allclose(result["final_distance"], 0.01 * steps, rtol=1e-6)


def test_a_run_of_another_format_is_refused_in_one_line(falling_point, tmp_path,
                                                      capsys) -> None:
    """No upgrade path before 1.0: a checkpoint or a config.json of no format or another one
    (an older crl's) is refused, by resume, load_run and the CLI, in one line that says to
    train again."""
    from crl.train.agent import init_state
    from crl.train.checkpoint import CHECKPOINT_FORMAT, Checkpointer

    setup, _ = falling_point
    state = init_state(setup)
    (tmp_path / "config.json").write_text(json.dumps(tiny_config().to_dict()))
    checkpointer = Checkpointer(tmp_path, keep=2)
    meta_file = tmp_path / CHECKPOINTS / "840" / "meta" / "metadata"
    try:
        checkpointer.save(840, state, state.agent.params, {"env_steps": 840},
                          {"final_success_rate": 0.0, "time_at_goal_fraction": 0.0})
        meta = json.loads(meta_file.read_text())
        assert meta["format"] == CHECKPOINT_FORMAT
        for found, said in ((None, "no format"), ("crl-checkpoint/0", "'crl-checkpoint/0'")):
            meta_file.write_text(json.dumps({k: v for k, v in meta.items() if k != "format"}
                                            | ({} if found is None else {"format": found})))
            for read in (lambda: checkpointer.restore_state(840, init_state(setup)),
                         lambda: load_run(tmp_path)):
                with pytest.raises(CheckpointError) as e:
                    read()
                assert re.fullmatch(
                    rf".*840: a checkpoint of {said}, from another crl version \(this one "
                    rf"reads '{CHECKPOINT_FORMAT}'\); train the run again with crl-train, .*",
                    str(e.value))
    finally:
        checkpointer.close()

    stored = tiny_config().to_dict()
    del stored["format"]
    (tmp_path / "config.json").write_text(json.dumps(stored))
    with pytest.raises(ConfigError, match=r"^config.json: a run of no format, from another crl "
                       r"version \(this one reads 'crl-run/1'\); train it again with crl-train"):
        prepare_run_dir(tmp_path, tiny_config(), resume=True)
    assert cli.main(["reacher", "--out", str(tmp_path), "--resume"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("crl-train: error: config.json: a run of no")


@pytest.mark.slow
def test_the_ant_trains_through_early_terminations(
    tiny_train_config: Callable[[str], TrainConfig],
) -> None:
    """A few small iterations on the real ant, two of its four envs launched above the healthy
    band between them: those episodes end at once, a new one opens in the buffer, SGD runs."""
    from crl.sim import tasks
    from crl.train.agent import init_state, make_iteration, make_setup

    config = dataclasses.replace(
        tiny_train_config("ant"),  # 4 envs, depth 4, width 32, 16-sample batches
        total_steps=4 * 8 * 3,
        replay=ReplayConfig(num_envs=4, unroll_length=8, env_steps_per_update=16,
                            buffer_steps=64, min_replay_steps=8),
    )
    validate(config, ("ant",))
    env = tasks.make("ant", dr="train")
    setup = make_setup(config, env)
    iteration, state = make_iteration(setup), init_state(setup)
    state, first = iteration(state)
    assert float(first["collect_terminated"]) == 0.0
    data = state.env_state.data
    state = state.replace(env_state=state.env_state.replace(
        data=data.replace(qpos=data.qpos.at[:2, env._base_qadr + 2].set(2.5))))
    for _ in range(2):
        state, metrics = iteration(state)
        assert bool(metrics["trained"])
        assert all(np.isfinite(float(v)) for k, v in metrics.items() if k != "trained")
    assert _check_episode_index(state.buffer, env.episode_length) >= 2
    assert int(state.sgd_steps) == 3 * config.sgd_steps_per_iteration


# --------------------------------------------------------------------------------- reacher


def reacher_config() -> TrainConfig:
    """The quick preset shrunk to a test's budget: 64 envs, width 64, 192k env steps (with the
    preset's smoothness terms it starts slower: 18% success at 144k, 73% at 192k), at a constant
    rate: the preset's decay is over the run, so in a run a third of the preset's length it would
    take the rate down while the preset's own run still learns at most of it (34% at 192k)."""
    quick = PRESETS["quick"]
    return dataclasses.replace(
        quick,
        task="reacher",
        seed=1,
        total_steps=64 * 16 * 188,
        algo=dataclasses.replace(quick.algo, lr_decay=1.0),
        network=NetworkConfig(depth=4, width=64, repr_dim=32),
        replay=dataclasses.replace(quick.replay, num_envs=64),
        eval=EvalConfig(eval_every=64 * 16 * 47, eval_episodes=128, held_out=False),
    )


@pytest.fixture(scope="module")
def reacher_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("runs") / "reacher"
    return run_dir, train(reacher_config(), run_dir, progress=False)


@pytest.mark.slow
def test_reacher_short_run_beats_the_untrained_policy(reacher_run) -> None:
    _, result = reacher_run
    untrained, trained = result.evaluations[0]["train"], result.evaluations[-1]["train"]
    assert trained["success_rate"] > untrained["success_rate"] + 0.2
    assert trained["final_distance_median"] < 0.7 * untrained["final_distance_median"]


@pytest.mark.slow
def test_reacher_checkpoint_restores_the_mjx_state_bit_for_bit(reacher_run) -> None:
    """The MJX env state holds zero-size and PRNG-key leaves that orbax cannot store as they
    are; the last checkpoint must still give back exactly the state the run ended with."""
    from crl.train.agent import init_state, make_setup
    from crl.train.checkpoint import Checkpointer
    from crl.train.trainer import make_envs

    run_dir, result = reacher_run
    config = reacher_config()
    template = init_state(make_setup(config, make_envs(config)[0]))
    checkpointer = Checkpointer(run_dir, keep=config.keep_checkpoints)
    try:
        restored = checkpointer.restore_state(result.env_steps, template)
    finally:
        checkpointer.close()

    def host(tree):
        return [np.asarray(jax.random.key_data(x) if jax.dtypes.issubdtype(x.dtype,
                                                                            jax.dtypes.prng_key)
                           else x) for x in jax.tree.leaves(tree)]

    assert jax.tree.structure(restored) == jax.tree.structure(result.state)
    for x, y in zip(host(restored), host(result.state), strict=True):
        np.testing.assert_array_equal(x, y)
    assert int(restored.iteration) == result.env_steps // config.env_steps_per_iteration


@pytest.mark.slow
def test_reacher_eval_cli_writes_json_curve_and_renders(reacher_run, tmp_path, capsys) -> None:
    """`crl-train eval` with --video, --frames and --curve: the trained actor rolled out and
    rendered for real (offscreen GL), beside the JSON and the learning curve."""
    import imageio.v2 as imageio

    from crl.sim import render

    run_dir, result = reacher_run
    out, video, sheet = tmp_path / "eval.json", tmp_path / "v.mp4", tmp_path / "f.png"
    argv = ["eval", "--run", str(run_dir), "--dr", "held-out", "--episodes", "16",
            "--video", str(video), "--frames", str(sheet), "--curve", str(tmp_path / "curve.png"),
            "--json", str(out)]
    assert cli.main(argv) == 0
    written = json.loads(out.read_text())
    assert (written["dr"], written["episodes"], written["step"]) == ("held-out", 16,
                                                                     result.env_steps)
    assert 0.0 <= written["final_success_rate"] <= written["success_rate"] <= 1.0
    assert (tmp_path / "curve.png").stat().st_size > 10_000
    rendered = written["rendered"]
    episodes = len(rendered["episodes"])
    assert episodes >= 1 and rendered["summary"]["episodes"] == episodes
    with imageio.get_reader(video) as reader:
        frames = [frame for frame in reader]
    assert len(frames) > episodes and np.std(frames[0]) > 5  # pictures, not blank buffers
    image = imageio.imread(sheet)
    h, gap = frames[0].shape[0], render.SHEET_GAP
    assert image.shape[0] == render.SHEET_HEADER + episodes * (h + gap) - gap
    captured = capsys.readouterr()
    assert "reacher @" in captured.out
    assert "crl-train eval done in" in captured.err  # the progress, on stderr


def test_best_step_picks_the_checkpoint_that_best_holds_the_goal(tmp_path: Path) -> None:
    """At the goal when the episode ends first, time at goal breaking ties; the held-out
    evaluation never counts, and a checkpoint without an evaluation is passed over."""
    from crl.train.checkpoint import CHECKPOINTS, CheckpointError, best_score, best_step

    def train(final: float, time_at_goal: float) -> dict[str, float]:
        return {"final_success_rate": final, "time_at_goal_fraction": time_at_goal / 50}

    evaluations = {
        100: {"train": train(0.90, 46.0)},  # the most time at goal, but leaves it more often
        200: {"train": train(0.97, 40.0), "held_out": train(0.5, 10.0)},
        300: {"train": train(0.97, 42.0), "held_out": train(0.1, 5.0)},  # ties 200; more time
        400: {"train": train(0.95, 45.0), "held_out": train(1.0, 50.0)},  # held-out: not read
        500: {},
    }
    for step, evaluation in evaluations.items():
        meta = tmp_path / CHECKPOINTS / str(step) / "meta"
        meta.mkdir(parents=True)
        (meta / "metadata").write_text(json.dumps({"env_steps": step, "evaluation": evaluation}))
    assert best_step(tmp_path) == 300
    assert best_score(train(1 / 100_000, 0.0)) > best_score(train(0.0, 50.0))
    with pytest.raises(CheckpointError, match="no checkpoint holds an evaluation"):
        best_step(tmp_path / "empty")
