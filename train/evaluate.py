"""Evaluation of the deterministic actor (tanh of the mean) on freshly drawn starts and goals.

Per episode: success (the achieved goal came within the success radius at any step), time at goal
(steps within the radius, the paper's metric) and final distance. Episodes run in parallel for the
full horizon, `episode_length` steps each; the summary is what the trainer logs and `crl-train
eval` prints.

An episode that terminates early (a fallen robot, `TaskConfig.healthy_z_range`) scores as the
paper's evaluation scores it (Brax's EvalWrapper: the env auto-resets, but an episode's metrics
stop accumulating once it is done): its steps up to and including the terminating one count, the
remaining steps of the horizon score no time at goal, and its final distance is the one at
termination. So time at goal stays out of `episode_length`, and falling costs the rest of it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from crl.core.oscillation import NEAR_GOAL_RADII, action_flips, oscillation
from crl.sim.env import jit as env_jit
from crl.train.networks import Actor, deterministic_action, network_config

Evaluator = Callable[[dict[str, Any], jax.Array], dict[str, jax.Array]]
# The paper: "When reporting an algorithm's performance as a single number, we compute the
# average score over the last five epochs of training" (one evaluation an epoch).
PAPER_SCORE_EVALUATIONS = 5


def reset_episodes(env: Any, key: jax.Array, episodes: int) -> Any:
    """The batched start states an evaluation with `key` runs: its starts, robots and goals, the
    goals from the task's evaluation set (`sample_eval_goal`: the paper's far maze goals)."""
    return jax.vmap(lambda k: env.reset(k, evaluation=True))(jax.random.split(key, episodes))


def evaluation_key(run_key: jax.Array, env_steps: int) -> jax.Array:
    """The key of a run's evaluation at `env_steps`: each evaluation draws fresh goals (one key
    for all would score every checkpoint on the same goals), reproducibly from the run's key."""
    key = jax.random.fold_in(run_key, env_steps >> 32)
    return jax.random.fold_in(key, env_steps & 0xFFFFFFFF)


def paper_score(evaluations: list[dict[str, Any]], split: str = "train") -> float | None:
    """A run's one number as the paper reports it: the mean time at goal over the last
    `PAPER_SCORE_EVALUATIONS` evaluations of `split`; None before any."""
    values = [e[split]["time_at_goal"] for e in evaluations if split in e]
    if not values:
        return None
    return float(np.mean(values[-PAPER_SCORE_EVALUATIONS:]))


def make_evaluator(env: Any, actor: Actor, episodes: int) -> Evaluator:
    """A jitted fn(actor_params, key) → per-episode {success, time_at_goal, final_distance,
    final_success} and the steps' {actions, near} (each command and whether it was chosen
    near the goal) for the oscillation figure (`crl.core.oscillation`)."""

    def run(actor_params: dict[str, Any], key: jax.Array) -> dict[str, jax.Array]:
        state = reset_episodes(env, key, episodes)
        running = jnp.ones(episodes, bool)
        near_radius = NEAR_GOAL_RADII * env.spec.success_radius

        def step(
            carry: tuple[Any, jax.Array], _: None
        ) -> tuple[tuple[Any, jax.Array], tuple[jax.Array, ...]]:
            state, running = carry  # running: not yet done before this step
            action = deterministic_action(actor, actor_params, state.obs, state.goal)
            near = running & (
                jnp.linalg.norm(state.achieved_goal - state.goal, axis=-1) <= near_radius
            )
            state = jax.vmap(env.step)(state, action)
            distance = jnp.linalg.norm(state.achieved_goal - state.goal, axis=-1)
            # A terminated episode's env steps on unscored (it is not reset: nothing reads it).
            scored = (state.success & running, distance, running, action, near)
            return (state, running & ~state.done), scored

        _, (success, distance, counted, actions, near) = jax.lax.scan(
            step, (state, running), None, length=env.episode_length
        )
        last = jnp.sum(counted, axis=0) - 1  # the episode's last scored step
        return {
            "success": jnp.any(success, axis=0),
            "time_at_goal": jnp.sum(success, axis=0),
            "final_distance": jnp.take_along_axis(distance, last[None], axis=0)[0],
            # At the goal when the episode ends: what a deployment (and the closed loop) scores;
            # a policy that reaches and then drifts or oscillates has success without it.
            "final_success": jnp.take_along_axis(success, last[None], axis=0)[0],
            "actions": actions,
            "near": near,
        }

    return env_jit(run)


def summarize(per_episode: dict[str, Any], episode_length: int) -> dict[str, float]:
    """Means and medians over episodes, as plain floats for JSON and TensorBoard."""
    success = np.asarray(per_episode["success"], dtype=np.float64)
    time_at_goal = np.asarray(per_episode["time_at_goal"], dtype=np.float64)
    final = np.asarray(per_episode["final_distance"], dtype=np.float64)
    return {
        "episodes": int(success.size),
        "success_rate": float(success.mean()),
        "final_success_rate": float(np.mean(per_episode["final_success"])),
        "time_at_goal": float(time_at_goal.mean()),
        "time_at_goal_fraction": float(time_at_goal.mean() / episode_length),
        "final_distance_median": float(np.median(final)),
        "final_distance_mean": float(final.mean()),
        "oscillation": oscillation(*action_flips(per_episode["actions"], per_episode["near"])),
    }


def evaluate_run(
    run_dir: Path,
    dr: str | None = None,
    episodes: int = 128,
    seed: int = 0,
    step: int | None = None,
    video: Path | None = None,
    frames: Path | None = None,
    render_episodes: int = 2,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Evaluate a run's checkpoint; `dr` is "off", "train" or "held-out" (None: as trained).

    With `video` / `frames`, also renders episodes of the same policy through
    `crl.sim.render.render_rollout`. `progress` is told each phase as it begins (loading,
    compiling, evaluating, rendering: `crl.train.progress.Phases` shows them).
    """
    from crl.sim import tasks
    from crl.train.checkpoint import load_run

    phase = progress or (lambda description: None)
    phase(f"loading {run_dir}")
    run = load_run(run_dir, step)
    dr = dr or run.config["dr"]
    env = tasks.make(run.config["task"], dr=dr, action=run.spec.action)
    net = run.spec.network
    assert net is not None  # the trainer always writes it
    actor = Actor(network_config(net, run.params), env.spec.act_dim)
    evaluator: Any = make_evaluator(env, actor, episodes)
    params, key = run.params["actor"], jax.random.PRNGKey(seed)
    phase(f"compiling the evaluator ({episodes} episodes of {env.episode_length} steps)")
    compiled = evaluator.lower(params, key).compile()
    phase(f"evaluating {episodes} episodes (dr {dr})")
    per_episode = compiled(params, key)
    result: dict[str, Any] = {
        "run": str(run_dir),
        "task": run.config["task"],
        "step": run.step,
        "dr": dr,
        "seed": seed,
        **summarize(jax.device_get(per_episode), env.episode_length),
    }
    if video is not None or frames is not None:
        from crl.sim.render import render_rollout

        actor_params = run.params["actor"]
        policy = jax.jit(lambda obs, goal: deterministic_action(actor, actor_params, obs, goal))
        rendered = render_rollout(env, policy, episodes=render_episodes, seed=seed, video=video,
                                  frames=frames, progress=phase)
        result["rendered"] = _jsonable(rendered)
    return result


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "tolist"):
        return value.tolist()
    return value
