"""Evaluation of the deterministic actor (tanh of the mean) on freshly drawn starts and goals.

Per episode: success (the achieved goal came within the success radius at any step), time at goal
(steps within the radius, the paper's metric) and final distance. Episodes run in parallel, one
full `episode_length` each; the summary is what the trainer logs and `crl-train eval` prints.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from crl.sim.env import jit as env_jit
from crl.train.networks import Actor, NetworkConfig, deterministic_action

Evaluator = Callable[[dict, jax.Array], dict[str, jax.Array]]


def make_evaluator(env: Any, actor: Actor, episodes: int) -> Evaluator:
    """A jitted fn(actor_params, key) → per-episode {success, time_at_goal, final_distance}."""

    def run(actor_params: dict, key: jax.Array) -> dict[str, jax.Array]:
        state = jax.vmap(env.reset)(jax.random.split(key, episodes))

        def step(state: Any, _: None) -> tuple[Any, tuple[jax.Array, jax.Array]]:
            action = deterministic_action(actor, actor_params, state.obs, state.goal)
            state = jax.vmap(env.step)(state, action)
            distance = jnp.linalg.norm(state.achieved_goal - state.goal, axis=-1)
            return state, (state.success, distance)

        _, (success, distance) = jax.lax.scan(step, state, None, length=env.episode_length)
        return {
            "success": jnp.any(success, axis=0),
            "time_at_goal": jnp.sum(success, axis=0),
            "final_distance": distance[-1],
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
        "time_at_goal": float(time_at_goal.mean()),
        "time_at_goal_fraction": float(time_at_goal.mean() / episode_length),
        "final_distance_median": float(np.median(final)),
        "final_distance_mean": float(final.mean()),
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
) -> dict[str, Any]:
    """Evaluate a run's checkpoint; `dr` is "on", "off" or "held-out" (None: as trained).

    With `video` / `frames`, also renders episodes of the same policy through
    `crl.sim.render.render_rollout`.
    """
    from crl.sim import tasks
    from crl.train.checkpoint import load_run
    from crl.train.config import DR_MODES

    run = load_run(run_dir, step)
    dr = dr or run.config["dr"]
    env = tasks.make(run.config["task"], dr=DR_MODES[dr])
    net = run.spec.network
    assert net is not None  # the trainer always writes it
    actor = Actor(NetworkConfig(net.depth, net.width, net.repr_dim, net.residual), env.spec.act_dim)
    evaluator = make_evaluator(env, actor, episodes)
    per_episode = evaluator(run.params["actor"], jax.random.PRNGKey(seed))
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
        rendered = render_rollout(
            env, policy, episodes=render_episodes, seed=seed, video=video, frames=frames
        )
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
