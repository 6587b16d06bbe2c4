"""Deep residual Contrastive RL (Wang et al., 2025): one agent's state and its training iteration.

One training iteration (`make_iteration`) is two jitted programs, each compiled with the XLA
options that suit it, run one after the other with the state left on the device:
  1. `collect`: `unroll_length` steps in `num_envs` environments with the stochastic actor,
     appended to the on-device trajectory buffer, compiled as env code (`crl.sim.env.jit`:
     MJX's kinematics need XLA:CPU's fusion emitters off);
  2. `learn`: once the buffer holds `min_replay_steps`, `sgd_steps_per_iteration` `sgd_step`s;
     each samples a relabeled batch, updates the actor and α, then the critic, on that same
     batch. Compiled with XLA's defaults (`learner_jit`): under the env's options an update
     is 12-15% slower (bench/results/learner_speed_cpu.json).
The host loop around it (evaluation, checkpoints, logging) is `crl.train.trainer`.

Data parallel: on a `Mesh` of N devices (`make_mesh`) each of the two is one SPMD program. The
environments and the replay buffer's env columns are split across the devices, parameters,
optimiser state and the RNG key are replicated, and each SGD batch is split along its rows; XLA
inserts the collectives (the batch gather from the sharded buffer, the all-gather of ψ for the
global InfoNCE negatives, the gradient all-reduce). Every random draw is the single-device one
(threefry is partitionable), so N devices compute what one device computes, up to float
rounding. In a multi-process run (`init_distributed`) each process holds its devices' envs.

Resume is exact: the state holds everything the next iteration reads (parameters, Adam moments,
α, buffer, env states, RNG), and every iteration runs the same two compiled programs, so a
resumed run reproduces the uninterrupted one bit for bit on CPU.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, TypeVar, cast

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from crl.core.spec import NetworkSpec
from crl.core.usage import ConfigError
from crl.sim.env import jit as env_jit
from crl.train import losses, replay
from crl.train.checkpoint import git_commit
from crl.train.config import TrainConfig
from crl.train.networks import Networks, init_params, make_networks

COLLECTOR = "collector"  # the agent that acts, beside the learners (learners.json)
# Independent random streams derived from the seed: training, evaluation.
TRAIN_STREAM, EVAL_STREAM = 0, 1
# The one mesh axis: data parallelism over environments and batch rows.
DATA_AXIS = "data"
F = TypeVar("F", bound=Callable[..., Any])


@struct.dataclass
class AgentState:
    """One agent's learning state: what an SGD step reads and writes."""

    params: dict[str, Any]  # {"actor", "sa_encoder", "g_encoder"}
    log_alpha: jax.Array
    actor_opt: optax.OptState
    critic_opt: optax.OptState
    alpha_opt: optax.OptState


@struct.dataclass
class TrainState:
    """Everything one iteration reads and writes (and what a checkpoint holds): the collector
    (the agent that acts), what it acts in and on, and its learners."""

    agent: AgentState
    env_state: Any  # the env's State, batched over num_envs
    buffer: replay.ReplayState
    key: jax.Array
    iteration: jax.Array  # i32: iterations completed
    sgd_steps: jax.Array  # i32: SGD steps taken
    learners: tuple[AgentState, ...] = ()  # one per `TrainConfig.learners` depth, in its order


@dataclasses.dataclass(frozen=True)
class Setup:
    """The static pieces an iteration is built from."""

    config: TrainConfig
    env: Any
    nets: Networks
    actor_tx: optax.GradientTransformation
    critic_tx: optax.GradientTransformation
    alpha_tx: optax.GradientTransformation
    name: str = COLLECTOR  # the agent's name in metrics and learners.json
    learners: tuple[Setup, ...] = ()  # the collector's learners, each with its own config

    @property
    def spec(self) -> Any:
        return self.env.spec


def make_setup(config: TrainConfig, env: Any) -> Setup:
    """The collector's setup, with one for each of its learners (`crl.train.learners`)."""
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
        nets=make_networks(config.network, env.spec.act_dim),
        actor_tx=optax.adam(learning_rate(a.actor_lr, config)),
        critic_tx=optax.adam(learning_rate(a.critic_lr, config)),
        alpha_tx=optax.adam(a.alpha_lr),
        name=name,
    )


def learning_rate(rate: float, config: TrainConfig) -> float | optax.Schedule:
    """`rate`, constant, or along a cosine to `lr_decay` of it at the run's last SGD step (the
    schedule counts the optimiser's own updates, so it is checkpointed and resumes with it)."""
    if config.algo.lr_decay == 1.0:
        return rate  # the paper's constant rate: no schedule state in the optimiser
    return optax.cosine_decay_schedule(rate, config.sgd_steps_total, alpha=config.algo.lr_decay)


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
        shardings = state_shardings(jax.eval_shape(lambda: fresh_state(setup)), mesh)
        state: TrainState = jax.jit(lambda: fresh_state(setup), out_shardings=shardings)()
        return state
    return fresh_state(setup)


def fresh_state(setup: Setup) -> TrainState:
    """`init_state` without a mesh (traceable: `jax.eval_shape` of it gives the state's shapes)."""
    c, spec = setup.config, setup.spec
    key = jax.random.fold_in(jax.random.PRNGKey(c.seed), TRAIN_STREAM)
    key, k_params, k_env = jax.random.split(key, 3)
    return TrainState(
        agent=_init_agent(setup, k_params),
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
    params = jax.jit(init_params, static_argnums=(0, 2, 3))(
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


# A field whose spread is at most this fraction of its magnitude (of 1, for a field smaller
# than 1) is taken as constant (float32 rounding of its mean alone is ~1e-7 of it) and keeps
# scale 1: dividing by the spread would blow rounding up to a unit input.
CONSTANT_SPREAD = 1e-6


def first_training_iteration(config: TrainConfig, buffer: replay.ReplayState) -> jax.Array:
    """True in the one iteration whose collection brought the buffer to `min_replay_steps`:
    the iteration that takes the run's first SGD steps."""
    written, need = buffer.written, config.replay.min_replay_steps
    return (written >= need) & (written - config.replay.unroll_length < need)


def _field_statistics(
    x: jax.Array, held: jax.Array, fields: dict[str, slice]
) -> tuple[jax.Array, jax.Array]:
    """Per component mean, and per field 1 / spread (the root mean of its components' variances)
    of `x` [time, env, dim] over the rows `held` [time]."""
    weight = held.astype(x.dtype)[:, None, None]
    count = jnp.sum(weight) * x.shape[1]
    mean = jnp.sum(weight * x, axis=(0, 1)) / count
    var = jnp.sum(weight * jnp.square(x - mean), axis=(0, 1)) / count
    scale = jnp.ones_like(mean)
    for part in fields.values():
        spread = jnp.sqrt(jnp.mean(var[part]))
        size = jnp.sqrt(jnp.mean(jnp.square(mean[part]))) + spread
        constant = spread <= CONSTANT_SPREAD * jnp.maximum(size, 1.0)
        scale = scale.at[part].set(jnp.where(constant, 1.0, 1.0 / spread))
    return mean, scale


def standardize_inputs(
    setup: Setup, agent: AgentState, buffer: replay.ReplayState
) -> AgentState:
    """The agent with every network's `InputNorm` set from the data the buffer holds: each
    observation and goal component less its mean, each observation field and goal field divided
    by its spread (one scale a field, so a field's components keep their geometry: metres stay
    comparable with metres). Goals are the achieved goals, which relabeling makes the training
    goals. The actions φ(s, a) takes stay as they are, already in [-1, 1]."""
    spec = setup.spec
    held = jnp.arange(replay.capacity(buffer)) < replay.size(buffer)
    obs_shift, obs_scale = _field_statistics(buffer.data.obs, held, spec.observation_slices())
    goal_shift, goal_scale = _field_statistics(buffer.data.next_achieved, held,
                                               spec.goal_slices())
    act_dim = spec.act_dim
    norms = {
        "actor": (jnp.concatenate([obs_shift, goal_shift]),
                  jnp.concatenate([obs_scale, goal_scale])),
        "sa_encoder": (jnp.concatenate([obs_shift, jnp.zeros(act_dim)]),
                       jnp.concatenate([obs_scale, jnp.ones(act_dim)])),
        "g_encoder": (goal_shift, goal_scale),
    }
    params = {name: {**tree, "input_norm": {"shift": norms[name][0], "scale": norms[name][1]}}
              for name, tree in agent.params.items()}
    return dataclasses.replace(agent, params=params)


def run_spec(setup: Setup, env_steps: int) -> Any:
    """The env's policy spec with the network shape and this run's provenance filled in.

    The network is the actor's (what is exported); the critic's depth and width are set only
    where they differ from it (`NetworkSpec`: None is the actor's).
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


def _all_finite(tree: Any) -> jax.Array:
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def finite_flags(agent: AgentState, prefix: str = "") -> dict[str, Any]:
    """The `finite/` flags `trainer.check_finite` reads for one agent (a learner's name as
    `prefix`)."""
    params = agent.params
    return {
        f"finite/{prefix}actor": _all_finite(params["actor"]),
        f"finite/{prefix}critic": _all_finite({k: params[k] for k in ("sa_encoder", "g_encoder")}),
        f"finite/{prefix}log_alpha": jnp.isfinite(agent.log_alpha),
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
    setup: Setup, mesh: Mesh | None, agent: AgentState, key: jax.Array,
    buffer: replay.ReplayState,
) -> tuple[AgentState, dict[str, Any]]:
    """One SGD step on a relabeled batch: the actor and α against the current critic, then the
    critic, on the same batch."""
    c, nets, params = setup.config, setup.nets, agent.params
    target_entropy = losses.target_entropy(setup.spec.act_dim, c.algo.entropy_scale)
    last_action = setup.spec.observation_slices().get("last_action")
    k_batch, k_actor = jax.random.split(key)
    batch, _ = replay.sample(buffer, k_batch, c.algo.batch_size, c.algo.gamma)
    # Rows split across devices; the InfoNCE negatives still span the global batch (the
    # compiler all-gathers ψ), so the loss is the single-device one (docs/training.md).
    batch = constrain(batch, P(DATA_AXIS), mesh)
    critic = {"sa_encoder": params["sa_encoder"], "g_encoder": params["g_encoder"]}

    # Actor and α first, against the current critic.
    (_, (log_prob, actor_metrics)), actor_grad = jax.value_and_grad(
        losses.actor_loss, has_aux=True
    )(params["actor"], critic, agent.log_alpha, nets, batch, k_actor,
      c.algo.action_rate_penalty, last_action, c.algo.temporal_penalty, c.algo.spatial_penalty,
      c.algo.spatial_sigma)
    alpha_value, alpha_grad = jax.value_and_grad(losses.alpha_loss)(
        agent.log_alpha, log_prob, target_entropy
    )
    updates, actor_opt = setup.actor_tx.update(actor_grad, agent.actor_opt)
    actor_params = optax.apply_updates(params["actor"], updates)
    updates, alpha_opt = setup.alpha_tx.update(alpha_grad, agent.alpha_opt)
    log_alpha = optax.apply_updates(agent.log_alpha, updates)

    # Then the critic, on the same batch.
    (_, critic_metrics), critic_grad = jax.value_and_grad(losses.critic_loss, has_aux=True)(
        critic, nets, batch, c.algo.logsumexp_penalty
    )
    updates, critic_opt = setup.critic_tx.update(critic_grad, agent.critic_opt)
    critic = optax.apply_updates(critic, updates)

    metrics = {
        **actor_metrics,
        **critic_metrics,
        "alpha_loss": alpha_value,
        "alpha": jnp.exp(log_alpha),
    }
    return AgentState(
        params={"actor": actor_params, **critic}, log_alpha=log_alpha, actor_opt=actor_opt,
        critic_opt=critic_opt, alpha_opt=alpha_opt,
    ), metrics


def first_standardized(setup: Setup, agent: AgentState, buffer: replay.ReplayState
                       ) -> AgentState:
    """`standardize_inputs` in the run's first training iteration, before its SGD steps (with
    `NetworkConfig.input_norm`); the agent unchanged in every other."""
    if not setup.config.network.input_norm:
        return agent
    result: AgentState = jax.lax.cond(
        first_training_iteration(setup.config, buffer),
        lambda a: standardize_inputs(setup, a, buffer), lambda a: a, agent)
    return result


def iteration_keys(key: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """An iteration's keys from the state's: the next state's, the collect's and the SGD's
    (which the learners take too, to sample the collector's batches)."""
    next_key, k_collect, k_sgd = jax.random.split(key, 3)
    return next_key, k_collect, k_sgd


def sgd_steps(
    setup: Setup, mesh: Mesh | None, agent: AgentState, buffer: replay.ReplayState,
    key: jax.Array, trains: jax.Array,
) -> tuple[AgentState, dict[str, Any]]:
    """An iteration's `sgd_steps_per_iteration` `sgd_step`s, their batches drawn from `key`;
    none (zero metrics) while `trains` is false, in the prefill."""
    c = setup.config

    def sgd(
        agent: AgentState, buffer: replay.ReplayState, key: jax.Array
    ) -> tuple[AgentState, dict[str, Any]]:
        keys = jax.random.split(key, c.sgd_steps_per_iteration)
        agent, metrics = jax.lax.scan(lambda a, k: sgd_step(setup, mesh, a, k, buffer),
                                      agent, keys)
        return agent, jax.tree.map(jnp.mean, metrics)

    def skip_sgd(
        agent: AgentState, buffer: replay.ReplayState, key: jax.Array
    ) -> tuple[AgentState, dict[str, Any]]:
        _, shapes = jax.eval_shape(sgd, agent, buffer, key)
        return agent, jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)

    result: tuple[AgentState, dict[str, Any]] = jax.lax.cond(trains, sgd, skip_sgd, agent,
                                                             buffer, key)
    return result


def learner_jit(fn: F, **kwargs: Any) -> F:
    """`jax.jit` with XLA's default options, for programs that only learn (no env step):
    `crl.sim.env.jit`'s options are a workaround for MJX's contact and kinematics code."""
    return cast(F, jax.jit(fn, **kwargs))


@dataclasses.dataclass(frozen=True)
class Iteration:
    """A training iteration: the `collect` program, then the `learn` program, on one state.
    Both take and return a whole state without learners (donated), so the host only dispatches
    them: nothing crosses to the host between the two."""

    collect: Any  # jitted, or compiled by `compile`: state -> (state, metrics)
    learn: Any

    def __call__(self, state: TrainState) -> tuple[TrainState, dict[str, Any]]:
        state, collected = self.collect(state)
        state, learned = self.learn(state)
        return state, {**collected, **learned}

    def compile(self, state: TrainState) -> Iteration:
        """Both programs compiled ahead of time for states shaped as `state` (`collect` returns
        one of the same shapes and shardings)."""
        return Iteration(self.collect.lower(state).compile(), self.learn.lower(state).compile())


Step = Callable[[TrainState], tuple[TrainState, dict[str, Any]]]


def iteration_steps(setup: Setup, mesh: Mesh | None = None) -> tuple[Step, Step]:
    """The iteration's two functions, not yet compiled: collect then insert, and (after
    prefill) the `sgd_step`s. The iteration's keys come from the state's key in both
    (`iteration_keys`), so they are those of one function; the second moves the state's key
    and counters on."""
    c = setup.config
    if c.algo.action_rate_penalty > 0 and "last_action" not in setup.spec.observation_slices():
        raise ConfigError(
            f"action_rate_penalty: {c.task!r} does not observe its last action (no "
            "`last_action` observation field); set it to 0"
        )

    def collect_and_insert(state: TrainState) -> tuple[TrainState, dict[str, Any]]:
        _, k_collect, _ = iteration_keys(state.key)
        env_state, unroll, metrics = collect(setup, state.agent.params["actor"],
                                             state.env_state, k_collect)
        buffer = replay.insert(state.buffer, constrain(unroll, P(None, DATA_AXIS), mesh))
        return dataclasses.replace(state, env_state=env_state, buffer=buffer), metrics

    def learn(state: TrainState) -> tuple[TrainState, dict[str, Any]]:
        key, _, k_sgd = iteration_keys(state.key)
        trains = replay.size(state.buffer) >= c.replay.min_replay_steps
        agent = first_standardized(setup, state.agent, state.buffer)
        agent, metrics = sgd_steps(setup, mesh, agent, state.buffer, k_sgd, trains)
        state = dataclasses.replace(
            state,
            agent=agent,
            key=key,
            iteration=state.iteration + 1,
            sgd_steps=state.sgd_steps + jnp.where(trains, c.sgd_steps_per_iteration, 0),
        )
        return state, {**metrics, "trained": trains, **finite_flags(agent)}

    return collect_and_insert, learn


def make_iteration(setup: Setup, mesh: Mesh | None = None) -> Iteration:
    """The training iteration: `iteration_steps`' collection compiled as env code, its learning
    with XLA's defaults.

    It takes and returns a state without learners: they train in `learners.make_learning`'s
    program. With a mesh it takes and returns `state_shardings` (metrics replicated), and each
    SGD batch is split by rows across the devices.
    """
    collect_and_insert, learn = iteration_steps(setup, mesh)
    placement: dict[str, Any] = {"donate_argnums": 0}
    if mesh is not None:
        collector = dataclasses.replace(setup, learners=())
        shardings = state_shardings(jax.eval_shape(lambda: fresh_state(collector)), mesh)
        placement |= {"in_shardings": (shardings,),
                      "out_shardings": (shardings, NamedSharding(mesh, P()))}
    return Iteration(env_jit(collect_and_insert, **placement), learner_jit(learn, **placement))
