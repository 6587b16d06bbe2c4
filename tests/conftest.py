"""Test session setup and the fixtures several test modules share.

`crl.sim.setup.setup_jax()` puts the XLA:CPU scheduler flag crl needs into XLA_FLAGS, which only
takes effect before jax first compiles, and gives MJX MuJoCo C's clamped-servo rule; calling it
here, before any test module runs jax, makes both hold for the whole session whatever order the
modules run in. Where jax is absent
(the robot's Python 3.10 venv of `make test-robot`: no train extra) there is nothing to set up,
and the tests that need jax skip, saying so.

`toy_spec` and `toy_policy` need no jax: a small policy spec built by hand and an ONNX policy
exported from random weights, for the tests of the spec, the export and the runtime.
`tiny_train_config` is the smallest run of a task that collects and trains, for the tests that
show a task trains.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from crl.core.spec import ActionSpec, Field, GoalSpec, NetworkSpec, PolicySpec, Provenance

if importlib.util.find_spec("jax") is not None:
    from crl.sim.setup import setup_jax

    setup_jax()


def pytest_report_header() -> str:
    """Which numpy the run had: `make test-robot` runs the robot's tests on 1.x and 2.x."""
    import numpy

    return f"numpy {numpy.__version__}"

def make_toy_spec(depth: int = 8, width: int = 64, repr_dim: int = 16,
                  **changes: Any) -> PolicySpec:
    """A valid spec: 9 observation values (joint_pos 5 with joint names, joint_vel 4), a 2-d goal
    in [-1, 1]², 3 position actions, 50 Hz, a network of `depth` × `width`; `changes` replace
    top-level fields (and are validated, as any spec is)."""
    fields: dict[str, Any] = dict(
        task="toy",
        observation=(Field("joint_pos", 5, "joint angles", "joint", tuple("abcde")),
                     Field("joint_vel", 4, "joint velocities")),
        goal=GoalSpec((Field("xy", 2),), "world", (-1.0, -1.0), (1.0, 1.0)),
        action=ActionSpec(3, ("j0", "j1", "j2"), "position", (0.5,) * 3, (0.0,) * 3,
                          (-0.5,) * 3, (0.5,) * 3),
        control_hz=50.0,
        success_radius=0.05,
        provenance=Provenance("toy", "0" * 64, train_step=123, git_commit="abc",
                              domain_randomization={"friction": [0.8, 1.2]}),
        network=NetworkSpec(depth, width, repr_dim),
    )
    return PolicySpec(**{**fields, **changes})


@pytest.fixture(scope="session")
def toy_spec() -> Callable[..., PolicySpec]:
    """`make_toy_spec`: call it for a spec, with other network sizes or fields if needed."""
    return make_toy_spec


@pytest.fixture(scope="session")
def toy_policy(tmp_path_factory: pytest.TempPathFactory) -> tuple[PolicySpec, dict, Path]:
    """(spec, params, path): the toy spec's actor with the critic readout, random weights,
    exported once (fp32)."""
    from crl.export.onnx_export import export_actor, random_params

    spec = make_toy_spec()
    params = random_params(spec)
    path = tmp_path_factory.mktemp("toy_policy") / "policy.onnx"
    export_actor(params, spec, path, critic=True)
    return spec, params, path


def make_tiny_train_config(task: str) -> Any:
    """A TrainConfig for `task` that collects and trains in three iterations (4 envs x 4 steps,
    depth 4, width 32, 16-sample batches), DR off, evaluating only at the start and the end."""
    from crl.train.config import AlgoConfig, EvalConfig, NetworkConfig, ReplayConfig, TrainConfig

    return TrainConfig(
        task=task,
        total_steps=4 * 4 * 3,
        dr="off",
        network=NetworkConfig(depth=4, width=32, repr_dim=16),
        algo=AlgoConfig(batch_size=16),
        replay=ReplayConfig(num_envs=4, unroll_length=4, env_steps_per_update=4.0,
                            buffer_steps=16, min_replay_steps=8),
        eval=EvalConfig(eval_every=10**9, eval_episodes=2, held_out=False),
        keep_checkpoints=1,
        log_every=1,
    )


@pytest.fixture(scope="session")
def tiny_train_config() -> Callable[[str], Any]:
    """`make_tiny_train_config`: call it with a task name."""
    return make_tiny_train_config
