"""Exploration versus expressivity (the paper's learners experiment, `TrainConfig.learners`).

Learners are agents of given depths that never act. The run's own agent, the collector, acts and
fills the buffer as it would alone. After each of its iterations the learners' own compiled
program (`make_learning`) repeats that iteration's SGD steps from the same key on the buffer it
left: the same batches, the same actor noise. Nothing of the collector's program reads the
learners, so the collector's parameters, buffer and env states are bitwise those of the run
without learners. Each learner's own actor is evaluated on the collector's evaluation episodes;
`learners.json` and `learners.png` put them side by side.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from crl.train import replay
from crl.train.agent import (
    COLLECTOR,
    AgentState,
    Setup,
    TrainState,
    finite_flags,
    first_standardized,
    fresh_state,
    host_local,
    iteration_keys,
    learner_jit,
    sgd_steps,
    state_shardings,
)
from crl.train.evaluate import make_evaluator, paper_score, summarize
from crl.train.networks import param_counts

Learning = Callable[
    [tuple[AgentState, ...], replay.ReplayState, jax.Array],
    tuple[tuple[AgentState, ...], dict[str, Any]],
]


def make_learning(setup: Setup, mesh: Mesh | None = None) -> Learning:
    """The learners' jitted program, run after each collector iteration on the key that
    iteration started from and the buffer it left (its SGD does not change the buffer): each
    learner takes the iteration's `sgd_step`s, keys and so batches and actor noise included.

    A program of its own, so the collector's is the one a run without learners compiles and
    nothing of the learners can reach it. Metrics are named `<learner>/<metric>`; a learner's
    non-finite loss or parameters stop the run as the collector's do.
    """
    c = setup.config

    def learn(
        learners: tuple[AgentState, ...], buffer: replay.ReplayState, key: jax.Array
    ) -> tuple[tuple[AgentState, ...], dict[str, Any]]:
        _, _, k_sgd = iteration_keys(key)
        trains = replay.size(buffer) >= c.replay.min_replay_steps
        updated: list[AgentState] = []
        metrics: dict[str, Any] = {}
        for learner, agent in zip(setup.learners, learners, strict=True):
            agent = first_standardized(learner, agent, buffer)
            agent, sgd_metrics = sgd_steps(learner, mesh, agent, buffer, k_sgd, trains)
            updated.append(agent)
            metrics |= {f"{learner.name}/{k}": v for k, v in sgd_metrics.items()}
            metrics |= finite_flags(agent, f"{learner.name}/")
        return tuple(updated), metrics

    if mesh is None:
        return learner_jit(learn, donate_argnums=0)
    replicated = NamedSharding(mesh, P())
    shardings = state_shardings(jax.eval_shape(lambda: fresh_state(setup)), mesh)
    return learner_jit(
        learn,
        donate_argnums=0,
        in_shardings=(shardings.learners, shardings.buffer, replicated),
        out_shardings=(shardings.learners, replicated),
    )


def run_iteration(
    iteration: Any, learning: Any | None, state: TrainState
) -> tuple[TrainState, dict[str, Any]]:
    """One iteration: the collector's program on the state without its learners, then (with
    learners) theirs, on the batches it sampled; one metrics dict."""
    if learning is None:
        result: tuple[TrainState, dict[str, Any]] = iteration(state)
        return result
    key = jnp.copy(state.key)  # the iteration donates the state, key included
    collector, metrics = iteration(dataclasses.replace(state, learners=()))
    learners, learner_metrics = learning(state.learners, collector.buffer, key)
    return dataclasses.replace(collector, learners=learners), {**metrics, **learner_metrics}


def agent_evaluators(
    setup: Setup, env: Any, held_out_env: Any | None
) -> dict[str, dict[str, Any]]:
    """Each agent's evaluators by split (`train`, and `held_out` with that env), by agent name:
    agents of one actor shape share theirs, so each shape compiles once."""
    episodes = setup.config.eval.eval_episodes
    by_shape: dict[Any, dict[str, Any]] = {}
    for agent in (setup, *setup.learners):
        shape = agent.config.network.actor
        if shape not in by_shape:
            by_shape[shape] = {"train": make_evaluator(env, agent.nets.actor, episodes)}
            if held_out_env is not None:
                by_shape[shape]["held_out"] = make_evaluator(held_out_env, agent.nets.actor,
                                                              episodes)
    return {a.name: by_shape[a.config.network.actor] for a in (setup, *setup.learners)}


def actors(setup: Setup, state: TrainState) -> dict[str, dict[str, Any]]:
    """Every agent's actor parameters by name, on this process's first device."""
    return {COLLECTOR: host_local(state.agent.params["actor"])} | {
        learner.name: host_local(agent.params["actor"])
        for learner, agent in zip(setup.learners, state.learners, strict=True)
    }


def evaluate_learners(
    setup: Setup, evaluators: dict[str, dict[str, Any]], state: TrainState,
    record: dict[str, Any], key: jax.Array,
) -> dict[str, Any]:
    """learners.json's row: each learner's own actor on the very episodes the collector was just
    evaluated on (`record`, drawn from `key`), beside the collector's figures."""
    row: dict[str, Any] = {k: record[k] for k in ("env_steps", "sgd_steps", "eval_key")}
    splits = evaluators[COLLECTOR]
    row[COLLECTOR] = {split: record[split] for split in splits}
    for learner, agent in zip(setup.learners, state.learners, strict=True):
        actor = host_local(agent.params["actor"])
        row[learner.name] = {
            split: summarize(jax.device_get(evaluator(actor, key)), setup.env.episode_length)
            for split, evaluator in evaluators[learner.name].items()
        }
    return row


def learners_file(setup: Setup, splits: Any, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """learners.json: every agent's shape and evaluations side by side, with each one's paper
    score per split."""
    agents = (setup, *setup.learners)
    return {
        "task": setup.config.task,
        "dr": setup.config.dr,
        "agents": {a.name: agent_info(a) for a in agents},
        "paper_score": {
            a.name: {split: paper_score([e[a.name] for e in rows], split) for split in splits}
            for a in agents
        },
        "evaluations": rows,
    }


def agent_info(setup: Setup) -> dict[str, Any]:
    """learners.json's description of an agent: whether it acts, its networks' shapes and their
    parameter counts."""
    network = setup.config.network
    return {
        "acts": setup.name == COLLECTOR,
        "actor": {"depth": network.actor.depth, "width": network.actor.width},
        "critic": {"depth": network.critic.depth, "width": network.critic.width},
        "params": param_counts(setup.nets, setup.spec.obs_dim, setup.spec.goal_dim),
    }
