"""Exploration versus expressivity: a collector that acts and learners that only learn, on reacher.

One tiny run with learners of depth 4 (the collector's own shape: a control) and 8, its batches
recorded inside the learners' program, beside the same run without learners. Both compile
reacher's collect: the tests that read them are `slow` (about 2 minutes on the 2-core CPU).
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import threading
from pathlib import Path
from typing import Any

import jax
import numpy as np
import pytest
from jax_helpers import small_quick_reacher

from crl.core.usage import ConfigError
from crl.train import agent as agent_module
from crl.train import cli, replay
from crl.train.agent import init_state, make_iteration, make_setup
from crl.train.checkpoint import prepare_run_dir
from crl.train.config import TrainConfig, validate
from crl.train.trainer import make_envs, train


def learners_config(**changes: Any) -> TrainConfig:
    """The quick preset at a test's size: 16 envs × 16 steps an iteration, 8 SGD steps of batch
    32 from the second iteration on (the first only fills the buffer), 4 iterations, evaluations
    at 0, 512 and 1024 steps."""
    config = small_quick_reacher(num_envs=16, iterations=4, eval_every=2, eval_episodes=8,
                                 buffer_steps=128, min_replay_steps=32)
    return dataclasses.replace(config, **{"learners": (4, 8), **changes})


def _digest(*arrays: Any) -> str:
    return hashlib.sha256(b"".join(np.asarray(x).tobytes() for x in arrays)).hexdigest()


@pytest.fixture(scope="module")
def learner_run(tmp_path_factory):
    """The run with learners, each batch a learner samples hashed inside the learners' program
    (`jax.debug.callback`, traced in only for the learners: the collector's program is left as a
    run without learners compiles it)."""
    batches: dict[str, list[str]] = collections.defaultdict(list)
    # The agent whose `sgd_step` is being traced, per thread: `compile_all` traces the learners'
    # program in a worker thread while the main thread traces the collector's iteration.
    tracing = threading.local()
    sgd_step, sample = agent_module.sgd_step, replay.sample

    def traced_sgd_step(setup, *args):
        previous, tracing.agent = getattr(tracing, "agent", None), setup.name
        try:
            return sgd_step(setup, *args)
        finally:
            tracing.agent = previous

    def recorded_sample(*args):
        batch, offset = sample(*args)
        name = tracing.agent
        if name != agent_module.COLLECTOR:
            jax.debug.callback(lambda *xs: batches[name].append(_digest(*xs)), *batch)
        return batch, offset

    run_dir = tmp_path_factory.mktemp("runs") / "learners"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(agent_module, "sgd_step", traced_sgd_step)
        patch.setattr(replay, "sample", recorded_sample)
        result = train(learners_config(), run_dir, progress=False)
    return run_dir, result, dict(batches)


def _leaves(tree: Any) -> list[np.ndarray]:
    return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(tree))]


def _bitwise_equal(a: Any, b: Any) -> bool:
    x, y = _leaves(a), _leaves(b)
    return len(x) == len(y) and all(np.array_equal(u, v) for u, v in zip(x, y, strict=True))


@pytest.mark.slow
def test_learners_never_reach_the_collector(learner_run) -> None:
    """The collector of the run with learners is, leaf for leaf and bit for bit, the run without
    them: parameters, optimiser states, α, replay buffer, env states, RNG."""
    _, result, _ = learner_run
    config = learners_config(learners=())
    setup = make_setup(config, make_envs(config)[0])
    state, iteration = init_state(setup), make_iteration(setup)
    for _ in range(config.iterations):
        state, _ = iteration(state)
    collector = dataclasses.replace(result.state, learners=())
    assert jax.tree.structure(collector) == jax.tree.structure(state)
    assert _bitwise_equal(collector, state)
    assert int(state.sgd_steps) == 3 * config.sgd_steps_per_iteration  # it trained


@pytest.mark.slow
def test_learners_train_on_the_collectors_batches(learner_run) -> None:
    """Both learners saw the same batches, one per SGD step; the depth-4 learner, of the
    collector's shape and initialised from its key, ends bit for bit the collector: the same
    batches, actor noise and updates, in the learners' own program. The depth-8 one is its own
    network."""
    _, result, batches = learner_run
    config = learners_config()
    assert set(batches) == {"learner_d4", "learner_d8"}
    assert len(batches["learner_d4"]) == 3 * config.sgd_steps_per_iteration
    assert batches["learner_d8"] == batches["learner_d4"]
    assert len(set(batches["learner_d4"])) == len(batches["learner_d4"])  # fresh each step
    control, deep = result.state.learners
    assert _bitwise_equal(control.params, result.state.agent.params)
    assert _bitwise_equal(control.log_alpha, result.state.agent.log_alpha)
    assert deep.params["sa_encoder"]["trunk"]["blocks"]["dense_0"]["kernel"].shape == (2, 32, 32)


@pytest.mark.slow
def test_the_run_writes_every_agents_evaluations_side_by_side(learner_run) -> None:
    """learners.json: the collector's evaluations (eval.json's, unchanged) and each learner's, of
    its own actor on the same episodes at the same steps, their shapes and parameter counts;
    learners.png draws them. The control learner scores exactly what the collector does."""
    run_dir, _, _ = learner_run
    data = json.loads((run_dir / "learners.json").read_text())
    collector_evals = json.loads((run_dir / "eval.json").read_text())["evaluations"]
    assert set(data["agents"]) == {"collector", "learner_d4", "learner_d8"}
    assert [a["acts"] for a in data["agents"].values()] == [True, False, False]
    params = {name: a["params"]["total"] for name, a in data["agents"].items()}
    assert params["collector"] == params["learner_d4"] < params["learner_d8"]
    assert data["agents"]["learner_d8"]["critic"] == {"depth": 8, "width": 32}
    rows = data["evaluations"]
    assert [r["env_steps"] for r in rows] == [e["env_steps"] for e in collector_evals] == [
        0, 512, 1024]
    for row, evaluation in zip(rows, collector_evals, strict=True):
        assert row["eval_key"] == evaluation["eval_key"]
        assert row["collector"]["train"] == evaluation["train"]
        assert row["learner_d4"]["train"] == evaluation["train"]
        assert set(row["learner_d8"]["train"]) == set(evaluation["train"])
    assert set(data["paper_score"]) == set(data["agents"])
    assert not any(k.startswith("learner") for e in collector_evals for k in e)
    assert (run_dir / "learners.png").stat().st_size > 10_000
    assert json.loads((run_dir / "config.json").read_text())["learners"] == [4, 8]


@pytest.mark.slow
def test_checkpoints_hold_the_learners_and_resume_keeps_them(learner_run) -> None:
    """The learners are part of the training state a checkpoint stores (so --resume continues
    them); a resumed run cannot drop or change them."""
    from crl.train.checkpoint import Checkpointer

    run_dir, result, _ = learner_run
    config = learners_config()
    checkpointer = Checkpointer(run_dir, keep=config.keep_checkpoints)
    try:
        template = init_state(make_setup(config, make_envs(config)[0]))
        restored = checkpointer.restore_state(result.env_steps, template)
    finally:
        checkpointer.close()
    assert _bitwise_equal(restored.learners, result.state.learners)
    with pytest.raises(ConfigError, match=r"^learners: .* started with \(4, 8\), not \(8,\)"):
        prepare_run_dir(run_dir, learners_config(learners=(8,)), resume=True)


def test_cli_learners_flag(monkeypatch, tmp_path: Path) -> None:
    """`--learners 4,64` reaches the config and the default run directory; depths that cannot
    be are refused; a config without learners records none."""
    seen = []

    def fake_train(config, out, resume=False, devices=None):
        seen.append((config, out))
        raise KeyboardInterrupt

    monkeypatch.setattr("crl.train.trainer.train", fake_train)
    monkeypatch.chdir(tmp_path)
    assert cli.main(["reacher", "--preset", "quick", "--learners", "4,64"]) == 130
    config, out = seen[-1]
    assert config.learners == (4, 64) and config.network.depth == 4
    assert out == Path("runs") / "reacher-d4-l4-64-s0"
    assert TrainConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    assert dataclasses.replace(config, learners=()).to_dict()["learners"] == []
    with pytest.raises(ConfigError, match=r"^learners: 6 is not a positive multiple of 4"):
        validate(learners_config(learners=(6,)))
    with pytest.raises(ConfigError, match="repeats a depth"):
        validate(learners_config(learners=(4, 4)))
