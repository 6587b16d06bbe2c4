"""Deep residual Contrastive RL (Wang et al., 2025): the training loop, top to bottom.

One training iteration is one jitted call:
  1. collect `unroll_length` steps in `num_envs` environments with the stochastic actor and
     append them to the on-device trajectory buffer;
  2. once the buffer holds `min_replay_steps`, run `sgd_steps_per_iteration` SGD steps; each
     samples a relabeled batch, updates the actor and α, then the critic, on that same batch.
Around it, plain Python: evaluation every `eval_every` env steps (deterministic actor, fresh
goals, optionally held-out domain randomization), a checkpoint at each evaluation, TensorBoard,
a progress bar, and a finiteness check that stops a diverged run before it is saved.

Data parallel: on a `Mesh` of N devices (`make_mesh`) the iteration is one SPMD program. The
environments and the replay buffer's env columns are split across the devices, parameters,
optimiser state and the RNG key are replicated, and each SGD batch is split along its rows; XLA
inserts the collectives (the batch gather from the sharded buffer, the all-gather of ψ for the
global InfoNCE negatives, the gradient all-reduce). Every random draw is the single-device one
(threefry is partitionable), so N devices compute what one device computes, up to float
rounding. In a multi-process run (`init_distributed`) each process holds its devices' envs.

Learners (`TrainConfig.learners`, the paper's exploration versus expressivity): agents of given
depths that never act. The run's own agent, the collector, acts and fills the buffer as it would
alone. After each of its iterations the learners' own compiled program (`make_learning`) repeats
that iteration's SGD steps from the same key on the buffer it left: the same batches, the same
actor noise. Nothing of the collector's program reads the learners, so the collector's
parameters, buffer and env states are bitwise those of the run without learners. Each learner's
own actor is evaluated on the collector's evaluation episodes; `learners.json` and
`learners.png` put them side by side.

Resume is exact: the checkpoint holds everything the next iteration reads (parameters, Adam
moments, α, buffer, env states, RNG), evaluation draws from its own key, and every iteration is
the same compiled program, so a resumed run reproduces the uninterrupted one bit for bit on CPU.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, cast

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from crl.sim.atomic import write_json
from crl.sim.env import jit as env_jit
from crl.sim.physics import check_physics
from crl.sim.spec import NetworkSpec
from crl.train import losses, replay
from crl.train.checkpoint import (
    CONFIG_FILE,
    SPEC_FILE,
    Checkpointer,
    CheckpointError,
    checkpoint_steps,
    git_commit,
)
from crl.train.config import ConfigError, NetworkConfig, TrainConfig, validate, validate_devices
from crl.train.evaluate import evaluation_key, make_evaluator, paper_score, summarize
from crl.train.plots import LEARNERS_FILE, plot_learners, plot_learning_curve

EVAL_FILE = "eval.json"
COLLECTOR = "collector"  # the agent that acts, beside the learners (learners.json)
# Independent random streams derived from the seed: training, evaluation.
TRAIN_STREAM, EVAL_STREAM = 0, 1
# The one mesh axis: data parallelism over environments and batch rows.
DATA_AXIS = "data"
# What the SGD loop carries: parameters, log α and the actor, critic and α optimiser states.
Carry = tuple[dict[str, Any], jax.Array, Any, Any, Any]


class DivergedError(RuntimeError):
    """A loss or parameter became non-finite; the message names it, the step, the checkpoint."""


@struct.dataclass
class AgentState:
    """A learner: what `update` carries (a `Carry`), under names a checkpoint can show."""

    params: dict[str, Any]
    log_alpha: jax.Array
    actor_opt: optax.OptState
    critic_opt: optax.OptState
    alpha_opt: optax.OptState

    def carry(self) -> Carry:
        return self.params, self.log_alpha, self.actor_opt, self.critic_opt, self.alpha_opt


@struct.dataclass
class TrainState:
    """Everything one iteration reads and writes (and what a checkpoint holds)."""

    params: dict[str, Any]  # {"actor", "sa_encoder", "g_encoder"}
    log_alpha: jax.Array
    actor_opt: optax.OptState
    critic_opt: optax.OptState
    alpha_opt: optax.OptState
    env_state: Any  # the env's State, batched over num_envs
    buffer: replay.ReplayState
    key: jax.Array
    iteration: jax.Array  # i32: iterations completed
    sgd_steps: jax.Array  # i32: SGD steps taken
    # One per `TrainConfig.learners` depth, in its order; last, so a run without learners has
    # the leaves (and checkpoint names) it always had.
    learners: tuple[AgentState, ...] = ()


@dataclasses.dataclass(frozen=True)
class Setup:
    """The static pieces an iteration is built from."""

    config: TrainConfig
    env: Any
    nets: losses.Networks
    actor_tx: optax.GradientTransformation
    critic_tx: optax.GradientTransformation
    alpha_tx: optax.GradientTransformation
    name: str = COLLECTOR  # the agent's name in metrics and learners.json
    learners: tuple[Setup, ...] = ()  # the collector's learners, each with its own config

    @property
    def spec(self) -> Any:
        return self.env.spec


def make_setup(config: TrainConfig, env: Any) -> Setup:
    """The collector's setup, with one for each of its learners."""
    learners = tuple(
        _agent_setup(learner_config(config, depth), env, learner_name(depth))
        for depth in config.learners
    )
    return dataclasses.replace(_agent_setup(config, env, COLLECTOR), learners=learners)


def _agent_setup(config: TrainConfig, env: Any, name: str) -> Setup:
    a = config.algo
    return Setup(
        config=config,
        env=env,
        nets=losses.make_networks(config.network, env.spec.act_dim),
        actor_tx=optax.adam(a.actor_lr),
        critic_tx=optax.adam(a.critic_lr),
        alpha_tx=optax.adam(a.alpha_lr),
        name=name,
    )


def learner_config(config: TrainConfig, depth: int) -> TrainConfig:
    """A learner's config: the collector's, with actor and critic both `depth` deep."""
    network = dataclasses.replace(config.network, depth=depth, actor_depth=None,
                                  critic_depth=None)
    return dataclasses.replace(config, network=network, learners=())


def learner_name(depth: int) -> str:
    return f"learner_d{depth}"


def init_state(setup: Setup, mesh: Mesh | None = None) -> TrainState:
    """Fresh networks, optimisers, α = 1, an empty buffer, environments about to reset.

    With a mesh, built by one jitted program straight into `state_shardings`: each device (each
    process) materialises only its own envs and buffer columns.
    """
    if mesh is not None:
        shardings = state_shardings(jax.eval_shape(lambda: _init_state(setup)), mesh)
        state: TrainState = jax.jit(lambda: _init_state(setup), out_shardings=shardings)()
        return state
    return _init_state(setup)


def _init_state(setup: Setup) -> TrainState:
    c, spec = setup.config, setup.spec
    key = jax.random.fold_in(jax.random.PRNGKey(c.seed), TRAIN_STREAM)
    key, k_params, k_env = jax.random.split(key, 3)
    agent = _init_agent(setup, k_params)
    return TrainState(
        params=agent.params,
        log_alpha=agent.log_alpha,
        actor_opt=agent.actor_opt,
        critic_opt=agent.critic_opt,
        alpha_opt=agent.alpha_opt,
        env_state=_pending_resets(setup.env, jax.random.split(k_env, c.replay.num_envs)),
        buffer=replay.init(
            c.replay.buffer_steps, c.replay.num_envs, spec.obs_dim, spec.act_dim, spec.goal_dim
        ),
        key=key,
        iteration=jnp.zeros((), jnp.int32),
        sgd_steps=jnp.zeros((), jnp.int32),
        # The collector's key: a learner of the collector's own shape starts where it does.
        learners=tuple(_init_agent(learner, k_params) for learner in setup.learners),
    )


def _init_agent(setup: Setup, key: jax.Array) -> AgentState:
    """Fresh networks from `key`, their optimisers, α = 1."""
    spec = setup.spec
    params = jax.jit(losses.init_params, static_argnums=(0, 2, 3))(
        setup.nets, key, spec.obs_dim, spec.goal_dim
    )
    critic = {"sa_encoder": params["sa_encoder"], "g_encoder": params["g_encoder"]}
    log_alpha = jnp.zeros((), jnp.float32)
    return AgentState(
        params=params,
        log_alpha=log_alpha,
        actor_opt=setup.actor_tx.init(params["actor"]),
        critic_opt=setup.critic_tx.init(critic),
        alpha_opt=setup.alpha_tx.init(log_alpha),
    )


def make_mesh(devices: int | None = None) -> Mesh:
    """A 1-D `DATA_AXIS` mesh over the first `devices` devices (default: all of them; in a
    multi-process run, every process's devices, in process order, so each holds its own envs)."""
    available = jax.devices()
    n = len(available) if devices is None else devices
    if not 1 <= n <= len(available):
        raise ConfigError(f"devices: {n} requested, {len(available)} available")
    if jax.process_count() > 1 and n != len(available):
        raise ConfigError(
            f"devices: a multi-process run trains on all {len(available)} devices of its "
            f"{jax.process_count()} processes; drop --devices"
        )
    return Mesh(np.array(available[:n]), (DATA_AXIS,))


def state_shardings(state: TrainState, mesh: Mesh) -> TrainState:
    """Where each leaf of `state` (arrays or their shapes) lives: env states split along their
    env axis, the buffer along its env columns (`data[time, env]`), everything else replicated."""
    replicated, envs = NamedSharding(mesh, P()), NamedSharding(mesh, P(DATA_AXIS))
    columns = NamedSharding(mesh, P(None, DATA_AXIS))
    # Trees of shardings shaped like the state: every buffer leaf by env columns but the
    # per-column episode numbers (by env) and the clock (replicated).
    buffer = dataclasses.replace(
        jax.tree.map(lambda _: columns, state.buffer), last_episode=envs, written=replicated
    )
    shardings: TrainState = jax.tree.map(lambda _: replicated, state)
    return dataclasses.replace(
        shardings, env_state=jax.tree.map(lambda _: envs, state.env_state), buffer=buffer
    )


def host_local(tree: Any) -> Any:
    """A replicated tree as arrays on this process's first device: what evaluation and other
    single-device programs take (in a multi-process run a global array is not addressable)."""
    return jax.device_put(jax.device_get(tree), jax.local_devices()[0])


def _pending_resets(env: Any, keys: jax.Array) -> Any:
    """Env states that are all `done`, so the first collect step resets them from `keys`.

    The iteration's own `reset_if_done` draws the first episodes: no separate reset program to
    compile before training starts.
    """
    shapes = jax.eval_shape(jax.vmap(env.reset), keys)
    state = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
    return state.replace(done=jnp.ones_like(state.done), rng=keys)


def upgrade_state(state: TrainState, missing: set[str]) -> TrainState:
    """Complete a state restored from a checkpoint written before the replay's episode index
    (`Checkpointer.restore_state`): the index is rebuilt from the stored rows' `t`."""
    index = {f"buffer.{name}" for name in replay.INDEX_FIELDS}
    if not missing <= index:
        raise CheckpointError(
            f"the checkpoint lacks {', '.join(sorted(missing - index))}: it is not from an "
            "earlier version of this run's training state"
        )
    if not missing:
        return state
    buffer = state.buffer
    return dataclasses.replace(
        state, buffer=replay.rebuild_index(buffer.data, int(buffer.written))
    )


def _all_finite(tree: Any) -> jax.Array:
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def _finite(params: dict[str, Any], log_alpha: jax.Array, prefix: str = "") -> dict[str, Any]:
    """The `finite/` flags `check_finite` reads for one agent (a learner's name as `prefix`)."""
    return {
        f"finite/{prefix}actor": _all_finite(params["actor"]),
        f"finite/{prefix}critic": _all_finite({k: params[k] for k in ("sa_encoder", "g_encoder")}),
        f"finite/{prefix}log_alpha": jnp.isfinite(log_alpha),
    }


def constrain(tree: Any, spec: P, mesh: Mesh | None) -> Any:
    """`tree` laid out over `mesh` as `spec` says (unchanged without a mesh)."""
    if mesh is None:
        return tree
    return jax.lax.with_sharding_constraint(tree, NamedSharding(mesh, spec))


def collect(
    setup: Setup, actor_params: dict[str, Any], env_state: Any, key: jax.Array
) -> tuple[Any, replay.Transition, dict[str, Any]]:
    """One unroll of every env with the stochastic actor: the env states after it, the
    transitions (time-major), and the fraction of steps at the goal and ended early."""
    env, nets = setup.env, setup.nets

    def step(
        env_state: Any, key: jax.Array
    ) -> tuple[Any, tuple[replay.Transition, jax.Array, jax.Array]]:
        env_state = jax.vmap(env.reset_if_done)(env_state)  # episodes that ended last step
        obs, goal = env_state.obs, env_state.goal
        # flax types `apply` as the output or (output, mutated variables); nothing mutates.
        mean, log_std = cast(
            tuple[jax.Array, jax.Array], nets.actor.apply({"params": actor_params}, obs, goal)
        )
        action, _ = losses.tanh_gaussian_sample(mean, log_std, key)
        next_state = jax.vmap(env.step)(env_state, action)
        # t is 0 on an episode's first step, however the last one ended (its length or an
        # early termination): the buffer's episode index opens an episode there.
        transition = replay.Transition(
            obs=env_state.obs,
            action=action,
            next_achieved=next_state.achieved_goal,
            t=env_state.t,
        )
        terminated = next_state.done & (next_state.t < env.episode_length)
        return next_state, (transition, next_state.success, terminated)

    keys = jax.random.split(key, setup.config.replay.unroll_length)
    env_state, (unroll, success, terminated) = jax.lax.scan(step, env_state, keys)
    # Episodes ended early per env step (a fallen robot), beside the fraction at goal.
    metrics = {"collect_at_goal": jnp.mean(success), "collect_terminated": jnp.mean(terminated)}
    return env_state, unroll, metrics


def sgd_step(
    setup: Setup, mesh: Mesh | None, carry: Carry, key: jax.Array, buffer: replay.ReplayState
) -> tuple[Carry, dict[str, Any]]:
    """One SGD step on a relabeled batch: the actor and α against the current critic, then the
    critic, on the same batch."""
    c, nets = setup.config, setup.nets
    target_entropy = losses.target_entropy(setup.spec.act_dim, c.algo.entropy_scale)
    last_action = setup.spec.observation_slices().get("last_action")
    params, log_alpha, actor_opt, critic_opt, alpha_opt = carry
    k_batch, k_actor = jax.random.split(key)
    batch, _ = replay.sample(buffer, k_batch, c.algo.batch_size, c.algo.gamma)
    # Rows split across devices; the InfoNCE negatives still span the global batch (the
    # compiler all-gathers ψ), so the loss is the single-device one (README, Training).
    batch = constrain(batch, P(DATA_AXIS), mesh)
    critic = {"sa_encoder": params["sa_encoder"], "g_encoder": params["g_encoder"]}

    # Actor and α first, against the current critic.
    (_, (log_prob, actor_metrics)), actor_grad = jax.value_and_grad(
        losses.actor_loss, has_aux=True
    )(params["actor"], critic, log_alpha, nets, batch, k_actor, c.algo.action_rate_penalty,
      last_action)
    alpha_value, alpha_grad = jax.value_and_grad(losses.alpha_loss)(
        log_alpha, log_prob, target_entropy
    )
    updates, actor_opt = setup.actor_tx.update(actor_grad, actor_opt)
    actor_params = optax.apply_updates(params["actor"], updates)
    updates, alpha_opt = setup.alpha_tx.update(alpha_grad, alpha_opt)
    log_alpha = optax.apply_updates(log_alpha, updates)

    # Then the critic, on the same batch.
    (_, critic_metrics), critic_grad = jax.value_and_grad(losses.critic_loss, has_aux=True)(
        critic, nets, batch, c.algo.logsumexp_penalty
    )
    updates, critic_opt = setup.critic_tx.update(critic_grad, critic_opt)
    critic = optax.apply_updates(critic, updates)

    params = {"actor": actor_params, **critic}
    metrics = {
        **actor_metrics,
        **critic_metrics,
        "alpha_loss": alpha_value,
        "alpha": jnp.exp(log_alpha),
    }
    return (params, log_alpha, actor_opt, critic_opt, alpha_opt), metrics


def iteration_keys(key: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """An iteration's keys from the state's: the next state's, the collect's and the SGD's
    (which the learners take too, to sample the collector's batches)."""
    next_key, k_collect, k_sgd = jax.random.split(key, 3)
    return next_key, k_collect, k_sgd


def sgd_steps(
    setup: Setup, mesh: Mesh | None, carry: Carry, buffer: replay.ReplayState, key: jax.Array,
    trains: jax.Array,
) -> tuple[Carry, dict[str, Any]]:
    """An iteration's `sgd_steps_per_iteration` `sgd_step`s, their batches drawn from `key`;
    none (zero metrics) while `trains` is false, in the prefill."""
    c = setup.config

    def sgd(
        carry: Carry, buffer: replay.ReplayState, key: jax.Array
    ) -> tuple[Carry, dict[str, Any]]:
        keys = jax.random.split(key, c.sgd_steps_per_iteration)
        carry, metrics = jax.lax.scan(lambda cr, k: sgd_step(setup, mesh, cr, k, buffer),
                                      carry, keys)
        return carry, jax.tree.map(jnp.mean, metrics)

    def skip_sgd(
        carry: Carry, buffer: replay.ReplayState, key: jax.Array
    ) -> tuple[Carry, dict[str, Any]]:
        _, shapes = jax.eval_shape(sgd, carry, buffer, key)
        return carry, jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)

    result: tuple[Carry, dict[str, Any]] = jax.lax.cond(trains, sgd, skip_sgd, carry, buffer,
                                                        key)
    return result


def make_iteration(
    setup: Setup, mesh: Mesh | None = None
) -> Callable[[TrainState], tuple[TrainState, dict[str, Any]]]:
    """The jitted training iteration: `collect`, insert, and (after prefill) `sgd_step`s.

    It takes and returns a state without learners: they train in `make_learning`'s program.
    With a mesh it takes and returns `state_shardings` (metrics replicated), and each SGD batch
    is split by rows across the devices.
    """
    c = setup.config
    if c.algo.action_rate_penalty > 0 and "last_action" not in setup.spec.observation_slices():
        raise ConfigError(
            f"action_rate_penalty: {c.task!r} does not observe its last action (no "
            "`last_action` observation field); set it to 0"
        )

    def iteration(state: TrainState) -> tuple[TrainState, dict[str, Any]]:
        key, k_collect, k_sgd = iteration_keys(state.key)
        actor_params = state.params["actor"]
        env_state, unroll, collect_metrics = collect(setup, actor_params, state.env_state,
                                                     k_collect)
        buffer = replay.insert(state.buffer, constrain(unroll, P(None, DATA_AXIS), mesh))
        state = dataclasses.replace(state, env_state=env_state, buffer=buffer, key=key)

        trains = replay.size(buffer) >= c.replay.min_replay_steps
        carry = (state.params, state.log_alpha, state.actor_opt, state.critic_opt, state.alpha_opt)
        carry, sgd_metrics = sgd_steps(setup, mesh, carry, buffer, k_sgd, trains)
        params, log_alpha, actor_opt, critic_opt, alpha_opt = carry
        state = dataclasses.replace(
            state,
            params=params,
            log_alpha=log_alpha,
            actor_opt=actor_opt,
            critic_opt=critic_opt,
            alpha_opt=alpha_opt,
            iteration=state.iteration + 1,
            sgd_steps=state.sgd_steps + jnp.where(trains, c.sgd_steps_per_iteration, 0),
        )
        metrics = {
            **collect_metrics,
            **sgd_metrics,
            "trained": trains,
            **_finite(params, log_alpha),
        }
        return state, metrics

    if mesh is None:
        return env_jit(iteration, donate_argnums=0)
    collector = dataclasses.replace(setup, learners=())
    shardings = state_shardings(jax.eval_shape(lambda: _init_state(collector)), mesh)
    return env_jit(
        iteration,
        donate_argnums=0,
        in_shardings=(shardings,),
        out_shardings=(shardings, NamedSharding(mesh, P())),
    )


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
            carry, sgd_metrics = sgd_steps(learner, mesh, agent.carry(), buffer, k_sgd, trains)
            agent = AgentState(*carry)
            updated.append(agent)
            metrics |= {f"{learner.name}/{k}": v for k, v in sgd_metrics.items()}
            metrics |= _finite(agent.params, agent.log_alpha, f"{learner.name}/")
        return tuple(updated), metrics

    if mesh is None:
        return env_jit(learn, donate_argnums=0)
    replicated = NamedSharding(mesh, P())
    shardings = state_shardings(jax.eval_shape(lambda: _init_state(setup)), mesh)
    return env_jit(
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


# ---------------------------------------------------------------------------------------------
# The host loop: run directory, evaluation, checkpoints, logging.


def run_spec(setup: Setup, env_steps: int) -> Any:
    """The env's policy spec with the network shape and this run's provenance filled in.

    The network is the actor's (what is exported); the critic's depth and width are added only
    where they differ from it, so a run with shared sizes writes the spec it always did.
    """
    actor, critic = setup.config.network.actor, setup.config.network.critic
    provenance = dataclasses.replace(
        setup.spec.provenance, train_step=int(env_steps), git_commit=git_commit()
    )
    return setup.spec.replace(
        network=NetworkSpec(
            depth=actor.depth, width=actor.width, repr_dim=actor.repr_dim,
            residual=actor.residual,
            critic_depth=None if critic.depth == actor.depth else critic.depth,
            critic_width=None if critic.width == actor.width else critic.width,
        ),
        provenance=provenance,
    )


def check_finite(metrics: dict[str, Any], env_steps: int, last_checkpoint: str) -> None:
    """Raise DivergedError naming the first non-finite loss or parameter group."""
    for name, value in metrics.items():
        if name.startswith("finite/"):
            if not bool(value):
                bad = f"{name.removeprefix('finite/')} parameters are not finite"
                break
        elif not np.all(np.isfinite(value)):
            bad = f"{name} is {float(np.asarray(value).ravel()[0])}"
            break
    else:
        return
    raise DivergedError(
        f"training stopped: {bad} at step {env_steps}; last good checkpoint: {last_checkpoint}"
    )


def compile_all(
    iteration: Any, learning: Any | None, state: TrainState,
    evaluators: dict[str, dict[str, Any]], actors: dict[str, dict[str, Any]], eval_key: jax.Array,
) -> tuple[Any, Any | None, dict[str, dict[str, Any]]]:
    """Compile the iteration, the learners' program and the evaluators at once: XLA compiles
    outside the GIL, so on a multi-core CPU the others' compile hides behind the iteration's.

    `evaluators[agent]` (by split) is lowered with `actors[agent]`, that agent's actor
    parameters; an evaluator that agents of one actor shape share compiles once.
    """
    jobs = {id(f): (f, actors[agent]) for agent, splits in evaluators.items()
            for f in splits.values()}
    with ThreadPoolExecutor(max_workers=len(jobs) + 1) as pool:

        def compile_evaluator(f: Any, actor_params: dict[str, Any]) -> Any:
            return f.lower(actor_params, eval_key).compile()

        def compile_learning(f: Any) -> Any:
            return f.lower(state.learners, state.buffer, state.key).compile()

        futures = {i: pool.submit(compile_evaluator, *job) for i, job in jobs.items()}
        learned = None if learning is None else pool.submit(compile_learning, learning)
        compiled = iteration.lower(dataclasses.replace(state, learners=())).compile()
        done = {i: future.result() for i, future in futures.items()}
        learning = None if learned is None else learned.result()
    return compiled, learning, {agent: {split: done[id(f)] for split, f in splits.items()}
                                for agent, splits in evaluators.items()}


def prepare_run_dir(
    run_dir: Path, config: TrainConfig, resume: bool, write: bool = True
) -> TrainConfig:
    """Create a new run directory, or check that `--resume` matches the run it continues.

    Returns the config to run with: on resume, the stored one (only total_steps may change).
    `write=False` only checks (the processes of a multi-process run other than the first).
    """
    config_path = run_dir / CONFIG_FILE
    if resume:
        if not config_path.is_file():
            raise ConfigError(f"resume: {run_dir} holds no run to resume (no {CONFIG_FILE})")
        stored = TrainConfig.from_dict(json.loads(config_path.read_text()))
        differs = _differences(stored, dataclasses.replace(config, total_steps=stored.total_steps))
        if differs:
            name, was, now = differs[0]
            raise ConfigError(
                f"{name}: the run in {run_dir} was started with {was!r}, not {now!r}; drop the "
                "flag to resume it (only --total-steps may change) or start a new --out"
            )
        config = dataclasses.replace(stored, total_steps=config.total_steps)
    elif checkpoint_steps(run_dir):
        # A config.json without checkpoints is a run that died before its first one (in setup
        # or compile): nothing to continue, so it starts again in place.
        raise ConfigError(
            f"out: {run_dir} already holds a run; pass --resume to continue it or choose "
            "another --out"
        )
    if write:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_json(config_path, config.to_dict(), sort_keys=True)
    return config


def _differences(a: Any, b: Any, prefix: str = "") -> list[tuple[str, Any, Any]]:
    out = []
    for f in dataclasses.fields(a):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if dataclasses.is_dataclass(x):
            out += _differences(x, y, prefix)
        elif x != y:
            out.append((prefix + f.name, x, y))
    return out


@dataclasses.dataclass
class RunResult:
    run_dir: Path
    env_steps: int
    evaluations: list[dict[str, Any]]
    state: TrainState


def make_envs(config: TrainConfig) -> tuple[Any, Any | None]:
    """The training env and, when configured, the held-out-DR evaluation env, on
    `config.physics`; each sized for the most envs it steps at once (`worlds`: warp's contact
    buffer), the training env also running the evaluation's episodes."""
    from crl.sim import tasks

    episodes, physics = config.eval.eval_episodes, config.physics
    worlds = max(config.replay.num_envs, episodes)
    env = tasks.make(config.task, dr=config.dr, physics=physics, worlds=worlds)
    held_out = (
        tasks.make(config.task, dr="held-out", physics=physics, worlds=episodes)
        if config.eval.held_out
        else None
    )
    return env, held_out


def checked_config(
    config: TrainConfig, run_dir: Path, resume: bool, env: Any, held_out_env: Any, mesh: Mesh
) -> TrainConfig:
    """The config to run with, after every check that needs no compile: the config itself, the
    device count, and the run directory (written by the first process only, once every process
    has checked it)."""
    if env is None:
        from crl.sim import tasks

        validate(config, tasks.TASKS)
    else:
        validate(config)
        if config.eval.held_out and held_out_env is None:
            raise ConfigError("held_out: no held-out environment given; pass --no-held-out")
    validate_devices(config, mesh.size)
    check_physics(config.physics, devices=mesh.size)
    prepare_run_dir(run_dir, config, resume, write=False)
    _sync("checked run directory")
    return prepare_run_dir(run_dir, config, resume, write=jax.process_index() == 0)


class RunRecorder:
    """What a run writes as it goes: evaluations (eval.json, the log), checkpoints and the spec.

    It holds the run's static pieces (evaluators, keys, checkpointer, clock); the training state
    is passed to each call, never captured, so what is evaluated and saved is the state named.
    """

    def __init__(
        self, run_dir: Path, setup: Setup, checkpointer: Checkpointer,
        evaluators: dict[str, Any], eval_key: jax.Array, evaluations: list[dict[str, Any]],
        started: float, learner_evaluators: dict[str, dict[str, Any]] | None = None,
        learner_evaluations: list[dict[str, Any]] | None = None,
    ):
        """`learner_evaluators`: each learner's evaluators by split, in `setup.learners`' order;
        `learner_evaluations`: learners.json's rows a resumed run keeps."""
        self.run_dir, self.setup, self.checkpointer = run_dir, setup, checkpointer
        self.evaluators, self.eval_key, self.evaluations = evaluators, eval_key, evaluations
        self.learner_evaluators = learner_evaluators or {}
        self.learner_evaluations = learner_evaluations or []
        self.primary = jax.process_index() == 0
        # Wall-clock in eval.json counts from the start of `train`, compile included; a resumed
        # run continues the clock of the evaluations it keeps.
        self.started = started
        self.wall_offset = evaluations[-1]["wall_s"] if evaluations else 0.0
        self.logger: _Logger | None = None

    def wall(self) -> float:
        return round(self.wall_offset + time.monotonic() - self.started, 2)

    def evaluate(self, state: TrainState, env_steps: int) -> dict[str, Any]:
        """Every evaluator on fresh episodes from this evaluation's own key; eval.json rewritten
        (by the first process) with the paper's score. Then the learners, if any, on the same
        episodes."""
        config = self.setup.config
        key = evaluation_key(self.eval_key, env_steps)
        record: dict[str, Any] = {
            "env_steps": env_steps,
            "sgd_steps": int(state.sgd_steps),
            "wall_s": self.wall(),
            # What `reset_episodes` drew this evaluation's episodes from (reproducible).
            "eval_key": np.asarray(jax.random.key_data(key)).tolist(),
        }
        actor = host_local(state.params["actor"])
        for name, evaluator in self.evaluators.items():
            per_episode = jax.device_get(evaluator(actor, key))
            record[name] = summarize(per_episode, self.setup.env.episode_length)
        self.evaluations.append(record)
        if not self.primary:
            return record
        write_json(self.run_dir / EVAL_FILE, {
            "task": config.task,
            "dr": config.dr,
            # The paper's one number for a run: mean time at goal over the last 5 evaluations.
            "paper_score": {split: paper_score(self.evaluations, split)
                            for split in self.evaluators},
            "evaluations": self.evaluations,
        }, sort_keys=True)
        if self.logger is not None:
            self.logger.evaluation(record)
        if self.learner_evaluators:
            self.evaluate_learners(state, record, key)
        return record

    def evaluate_learners(self, state: TrainState, record: dict[str, Any], key: jax.Array) -> None:
        """Each learner's own actor on the very episodes the collector was just evaluated on
        (`record`, drawn from `key`); learners.json rewritten with every agent side by side."""
        row: dict[str, Any] = {k: record[k] for k in ("env_steps", "sgd_steps", "eval_key")}
        row[COLLECTOR] = {split: record[split] for split in self.evaluators}
        for (name, evaluators), agent in zip(self.learner_evaluators.items(), state.learners,
                                             strict=True):
            actor = host_local(agent.params["actor"])
            row[name] = {split: summarize(jax.device_get(evaluator(actor, key)),
                                          self.setup.env.episode_length)
                         for split, evaluator in evaluators.items()}
        self.learner_evaluations.append(row)
        if not self.primary:
            return
        agents = (self.setup, *self.setup.learners)
        write_json(self.run_dir / LEARNERS_FILE, {
            "task": self.setup.config.task,
            "dr": self.setup.config.dr,
            "agents": {a.name: agent_info(a) for a in agents},
            "paper_score": {
                a.name: {split: paper_score([e[a.name] for e in self.learner_evaluations], split)
                         for split in self.evaluators}
                for a in agents
            },
            "evaluations": self.learner_evaluations,
        }, sort_keys=True)
        if self.logger is not None:
            self.logger.learners(row)

    def save(self, state: TrainState, env_steps: int, record: dict[str, Any]) -> str:
        """A checkpoint of `state` with its evaluation (the best by time at goal is kept), and
        spec.json for its step."""
        spec = run_spec(self.setup, env_steps)
        meta = {"env_steps": env_steps, "spec": spec.to_dict(), "evaluation": record}
        # The parameters as plain (replicated) arrays: `load_run` reads them on any machine.
        path = self.checkpointer.save(
            env_steps, state, jax.device_get(state.params), meta,
            {"time_at_goal": record["train"]["time_at_goal"]},
        )
        if self.primary:
            write_json(self.run_dir / SPEC_FILE, spec.to_dict(), sort_keys=True)
        return str(path)


def agent_info(setup: Setup) -> dict[str, Any]:
    """learners.json's description of an agent: whether it acts, its networks' shapes and their
    parameter counts."""
    network = setup.config.network
    return {
        "acts": setup.name == COLLECTOR,
        "actor": {"depth": network.actor.depth, "width": network.actor.width},
        "critic": {"depth": network.critic.depth, "width": network.critic.width},
        "params": losses.param_counts(setup.nets, setup.spec.obs_dim, setup.spec.goal_dim),
    }


def evaluation_due(config: TrainConfig, it: int) -> bool:
    """Whether iteration `it` (0-based) crosses an `eval_every` boundary or is the last."""
    env_steps = (it + 1) * config.env_steps_per_iteration
    every = config.eval.eval_every
    crossed = env_steps // every > (env_steps - config.env_steps_per_iteration) // every
    return crossed or it + 1 == config.iterations


def starting_state(
    setup: Setup, mesh: Mesh, checkpointer: Checkpointer, run_dir: Path, resume: bool
) -> tuple[TrainState, list[dict[str, Any]], list[dict[str, Any]]]:
    """The state a run trains from: fresh, or with `resume` the latest checkpoint's (when there
    is one), with the evaluations made up to it, the collector's and the learners'."""
    state = init_state(setup, mesh)
    step = checkpointer.latest_step() if resume else None
    if step is None:
        return state, [], []
    state = checkpointer.restore_state(step, state, upgrade=upgrade_state)
    # Leaves an older checkpoint lacked come back on one device: place all as the mesh does.
    state = jax.device_put(state, state_shardings(state, mesh))
    evaluations, learners = (
        [e for e in _read_evaluations(run_dir, name) if e["env_steps"] <= step]
        for name in (EVAL_FILE, LEARNERS_FILE)
    )
    return state, evaluations, learners


def train(
    config: TrainConfig,
    run_dir: Path,
    *,
    resume: bool = False,
    env: Any = None,
    held_out_env: Any = None,
    progress: bool = True,
    devices: int | None = None,
) -> RunResult:
    """Train (or continue) the run in `run_dir`. `env` replaces `crl.sim.tasks.make(task)`
    (tests pass stand-ins); config errors raise ConfigError before anything is compiled.

    `devices`: data parallel over that many devices (default: all; `make_mesh`). A checkpoint
    does not depend on it: a run resumes on any device count that divides its sizes. In a
    multi-process run every process calls this; the first one writes the run directory's files.
    """
    started = time.monotonic()
    run_dir = Path(run_dir)
    mesh = make_mesh(devices)
    config = checked_config(config, run_dir, resume, env, held_out_env, mesh)
    if env is None:
        env, held_out_env = make_envs(config)

    setup = make_setup(config, env)
    checkpointer = Checkpointer(run_dir, keep=config.keep_checkpoints)
    state, evaluations, learner_evaluations = starting_state(
        setup, mesh, checkpointer, run_dir, resume
    )

    # Each evaluation draws fresh episodes (starts, goals, robots), as the paper's evaluator
    # does, from its own key: `evaluation_key(eval_key, env_steps)`, apart from training's
    # stream, so a resumed run evaluates what the uninterrupted one would have. Learners are
    # evaluated on the collector's episodes, each with its own actor (one evaluator per shape).
    eval_key = jax.random.fold_in(jax.random.PRNGKey(config.seed), EVAL_STREAM)
    by_shape: dict[NetworkConfig, dict[str, Any]] = {}
    for agent in (setup, *setup.learners):
        shape = agent.config.network.actor
        if shape not in by_shape:
            by_shape[shape] = {"train": make_evaluator(env, agent.nets.actor,
                                                       config.eval.eval_episodes)}
            if held_out_env is not None:
                by_shape[shape]["held_out"] = make_evaluator(
                    held_out_env, agent.nets.actor, config.eval.eval_episodes
                )
    evaluators = {a.name: by_shape[a.config.network.actor] for a in (setup, *setup.learners)}
    actors = {COLLECTOR: host_local(state.params["actor"])} | {
        learner.name: host_local(agent.params["actor"])
        for learner, agent in zip(setup.learners, state.learners, strict=True)
    }

    start = int(state.iteration)
    env_steps = start * config.env_steps_per_iteration
    primary = jax.process_index() == 0
    logger = _Logger(run_dir, config, env_steps, int(state.sgd_steps), progress, primary)
    try:
        iteration_fn, learning_fn, evaluators = compile_all(
            make_iteration(setup, mesh), make_learning(setup, mesh) if setup.learners else None,
            state, evaluators, actors, eval_key,
        )
        collector = evaluators.pop(COLLECTOR)
        recorder = RunRecorder(run_dir, setup, checkpointer, collector, eval_key, evaluations,
                               started, evaluators, learner_evaluations)
        recorder.logger = logger
        logger.compiled(recorder.wall())
        last_checkpoint = str(checkpointer.path(env_steps))
        # The untrained policy's figures, once: a run resumed from its step-0 checkpoint kept
        # them, and a second copy would weigh in eval.json's paper score.
        if start == 0 and not evaluations:
            last_checkpoint = recorder.save(state, 0, recorder.evaluate(state, 0))
        pending: list[tuple[int, dict[str, Any]]] = []
        for it in range(start, config.iterations):
            state, metrics = run_iteration(iteration_fn, learning_fn, state)
            env_steps = (it + 1) * config.env_steps_per_iteration
            pending.append((env_steps, metrics))
            evaluate_now = evaluation_due(config, it)
            if evaluate_now or len(pending) >= config.log_every:
                for steps, m in pending:  # oldest first, so the first bad step is named
                    check_finite(jax.device_get(m), steps, last_checkpoint)
                logger.training(env_steps, int(state.sgd_steps), jax.device_get(metrics))
                pending.clear()
            if evaluate_now:
                last_checkpoint = recorder.save(state, env_steps,
                                                recorder.evaluate(state, env_steps))
    finally:
        logger.close()
        checkpointer.close()
    if primary:
        plot_learning_curve(run_dir)
        if setup.learners:
            plot_learners(run_dir)
    return RunResult(run_dir=run_dir, env_steps=env_steps, evaluations=evaluations, state=state)


def _sync(name: str) -> None:
    """A barrier across the processes of a multi-process run (nothing in a single one)."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


def _read_evaluations(run_dir: Path, name: str = EVAL_FILE) -> list[dict[str, Any]]:
    path = run_dir / name
    if not path.is_file():
        return []
    return list(json.loads(path.read_text()).get("evaluations", []))


class _NullWriter:
    """TensorBoard's writer for the processes that write nothing."""

    def add_scalar(self, *args: Any, **kwargs: Any) -> None:
        pass

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


class _Logger:
    """Console progress bar and TensorBoard scalars."""

    def __init__(
        self, run_dir: Path, config: TrainConfig, env_steps: int, sgd_steps: int, show: bool,
        primary: bool = True,
    ) -> None:
        """Only the `primary` process of a multi-process run shows progress and writes events."""
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )
        from tensorboardX import SummaryWriter

        self._writer: Any = (
            SummaryWriter(str(run_dir / "tb"), purge_step=env_steps or None) if primary
            else _NullWriter()
        )
        self._last = (time.monotonic(), env_steps, sgd_steps)
        self._progress = Progress(
            TextColumn(f"[bold]{config.task}[/] {{task.description}}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rates]}"),
            TextColumn("success {task.fields[success]}"),
            TimeRemainingColumn(),
            disable=not (show and primary),
        )
        self._task = self._progress.add_task(
            "compiling", total=config.iterations * config.env_steps_per_iteration,
            completed=env_steps, rates="", success="-",
        )
        self._progress.start()

    def compiled(self, seconds: float) -> None:
        """Rates count from here; the console says how long the compile took."""
        _, env_steps, sgd_steps = self._last
        self._last = (time.monotonic(), env_steps, sgd_steps)
        self._progress.update(self._task, description="")
        self._progress.console.print(f"set up and compiled in {seconds:.1f} s", soft_wrap=True)

    def training(self, env_steps: int, sgd_steps: int, metrics: dict[str, Any]) -> None:
        now = time.monotonic()
        t, steps, sgd = self._last
        dt = max(now - t, 1e-9)
        sps, sgd_rate = (env_steps - steps) / dt, (sgd_steps - sgd) / dt
        self._last = (now, env_steps, sgd_steps)
        self._progress.update(
            self._task, completed=env_steps, rates=f"{sps:,.0f} SPS  {sgd_rate:,.0f} SGD/s"
        )
        w = self._writer
        w.add_scalar("perf/sps", sps, env_steps)
        w.add_scalar("perf/sgd_steps_per_s", sgd_rate, env_steps)
        if bool(metrics["trained"]):
            for name, value in metrics.items():
                if not name.startswith("finite/") and name != "trained":
                    w.add_scalar(f"train/{name}", float(value), env_steps)

    def evaluation(self, record: dict[str, Any]) -> None:
        for split in ("train", "held_out"):
            for name, value in record.get(split, {}).items():
                self._writer.add_scalar(f"eval_{split}/{name}", value, record["env_steps"])
        self._writer.flush()
        s = record["train"]
        self._progress.update(self._task, success=f"{s['success_rate']:.0%}")
        self._progress.console.print(
            f"eval @ {record['env_steps']:>11,} steps: success {s['success_rate']:6.1%}  "
            f"time at goal {s['time_at_goal']:7.1f}  median final distance "
            f"{s['final_distance_median']:.4f}"
            + (f"  (held-out DR: success {record['held_out']['success_rate']:.1%})"
               if "held_out" in record else ""),
            soft_wrap=True,  # one line per evaluation, also in logs piped to a file
        )

    def learners(self, row: dict[str, Any]) -> None:
        """Each learner's figures beside the collector's (one console line per evaluation)."""
        names = [name for name in row if name.startswith("learner_")]
        for name in names:
            for split, figures in row[name].items():
                for key, value in figures.items():
                    self._writer.add_scalar(f"eval_{split}_{name}/{key}", value, row["env_steps"])
        self._writer.flush()
        self._progress.console.print(
            f"learners @ {row['env_steps']:>9,} steps: time at goal "
            + "  ".join(f"{name} {row[name]['train']['time_at_goal']:.1f}" for name in names),
            soft_wrap=True,
        )

    def close(self) -> None:
        self._progress.stop()
        self._writer.close()
