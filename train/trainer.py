"""The training run's host loop: run directory, evaluation, checkpoints, logging.

`train` builds the agent (`crl.train.agent`) and its learners (`crl.train.learners`), compiles
their programs and the evaluators at once, and runs the iterations. Around them, plain Python:
evaluation every `eval_every` env steps (deterministic actor, fresh goals, optionally held-out
domain randomization) and a checkpoint at each (`RunRecorder`), TensorBoard and a progress bar
(`crl.train.progress.RunLogger`), and a finiteness check that stops a diverged run before it is
saved. Evaluation draws from its own key, so a resumed run evaluates what the uninterrupted one
would have.
"""

from __future__ import annotations

import dataclasses
import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from crl.core.atomic import write_json
from crl.core.usage import ConfigError
from crl.sim.physics import check_physics
from crl.train import learners
from crl.train.agent import (
    COLLECTOR,
    EVAL_STREAM,
    Iteration,
    Setup,
    TrainState,
    host_local,
    init_state,
    make_iteration,
    make_mesh,
    make_setup,
    run_spec,
    state_shardings,
)
from crl.train.checkpoint import SPEC_FILE, Checkpointer, prepare_run_dir
from crl.train.config import TrainConfig, validate, validate_devices
from crl.train.evaluate import evaluation_key, paper_score, summarize
from crl.train.plots import LEARNERS_FILE, plot_learners, plot_learning_curve
from crl.train.progress import RunLogger

EVAL_FILE = "eval.json"


class DivergedError(RuntimeError):
    """A loss or parameter became non-finite; the message names it, the step, the checkpoint."""


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
    iteration: Iteration, learning: Any | None, state: TrainState,
    evaluators: dict[str, dict[str, Any]], actors: dict[str, dict[str, Any]], eval_key: jax.Array,
) -> tuple[Iteration, Any | None, dict[str, dict[str, Any]]]:
    """Compile the iteration's two programs, the learners' program and the evaluators at once:
    XLA compiles outside the GIL, so on a multi-core CPU the others' compiles hide behind the
    collection's (the env's is the longest).

    `evaluators[agent]` (by split) is lowered with `actors[agent]`, that agent's actor
    parameters; an evaluator that agents of one actor shape share compiles once.
    """
    jobs = {id(f): (f, actors[agent]) for agent, splits in evaluators.items()
            for f in splits.values()}
    collector = dataclasses.replace(state, learners=())
    with ThreadPoolExecutor(max_workers=len(jobs) + 2) as pool:

        def compile_evaluator(f: Any, actor_params: dict[str, Any]) -> Any:
            return f.lower(actor_params, eval_key).compile()

        def compile_learning(f: Any) -> Any:
            return f.lower(state.learners, state.buffer, state.key).compile()

        def compile_learn() -> Any:
            return iteration.learn.lower(collector).compile()

        futures = {i: pool.submit(compile_evaluator, *job) for i, job in jobs.items()}
        learned = None if learning is None else pool.submit(compile_learning, learning)
        learn = pool.submit(compile_learn)
        collect = iteration.collect.lower(collector).compile()
        done = {i: future.result() for i, future in futures.items()}
        learning = None if learned is None else learned.result()
        compiled = Iteration(collect, learn.result())
    return compiled, learning, {agent: {split: done[id(f)] for split, f in splits.items()}
                                for agent, splits in evaluators.items()}


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
        evaluators: dict[str, dict[str, Any]], eval_key: jax.Array,
        evaluations: list[dict[str, Any]], learner_evaluations: list[dict[str, Any]],
        started: float, logger: RunLogger,
    ):
        """`evaluators`: every agent's by name, then split; `evaluations` and
        `learner_evaluations`: eval.json's and learners.json's rows a resumed run keeps."""
        self.run_dir, self.setup, self.checkpointer = run_dir, setup, checkpointer
        self.evaluators, self.eval_key, self.evaluations = evaluators, eval_key, evaluations
        self.learner_evaluations, self.logger = learner_evaluations, logger
        self.primary = jax.process_index() == 0
        # Wall-clock in eval.json counts from the start of `train`, compile included; a resumed
        # run continues the clock of the evaluations it keeps.
        self.started = started
        self.wall_offset = evaluations[-1]["wall_s"] if evaluations else 0.0

    def wall(self) -> float:
        return round(self.wall_offset + time.monotonic() - self.started, 2)

    def evaluate(self, state: TrainState, env_steps: int) -> dict[str, Any]:
        """Every evaluator on fresh episodes from this evaluation's own key; eval.json rewritten
        (by the first process) with the paper's score. Then the learners, if any, on the same
        episodes, and learners.json."""
        config, splits = self.setup.config, self.evaluators[COLLECTOR]
        key = evaluation_key(self.eval_key, env_steps)
        record: dict[str, Any] = {
            "env_steps": env_steps,
            "sgd_steps": int(state.sgd_steps),
            "wall_s": self.wall(),
            # What `reset_episodes` drew this evaluation's episodes from (reproducible).
            "eval_key": np.asarray(jax.random.key_data(key)).tolist(),
        }
        actor = host_local(state.agent.params["actor"])
        for name, evaluator in splits.items():
            per_episode = jax.device_get(evaluator(actor, key))
            record[name] = summarize(per_episode, self.setup.env.episode_length)
        self.evaluations.append(record)
        if not self.primary:
            return record
        write_json(self.run_dir / EVAL_FILE, {
            "task": config.task,
            "dr": config.dr,
            # The paper's one number for a run: mean time at goal over the last 5 evaluations.
            "paper_score": {split: paper_score(self.evaluations, split) for split in splits},
            "evaluations": self.evaluations,
        }, sort_keys=True)
        self.logger.evaluation(record)
        if self.setup.learners:
            row = learners.evaluate_learners(self.setup, self.evaluators, state, record, key)
            self.learner_evaluations.append(row)
            write_json(self.run_dir / LEARNERS_FILE,
                       learners.learners_file(self.setup, splits, self.learner_evaluations),
                       sort_keys=True)
            self.logger.learners(row)
        return record

    def save(self, state: TrainState, env_steps: int, record: dict[str, Any]) -> str:
        """A checkpoint of `state` with its evaluation (the best by `best_score` is kept), and
        spec.json for its step."""
        spec = run_spec(self.setup, env_steps)
        meta = {"env_steps": env_steps, "spec": spec.to_dict(), "evaluation": record}
        # The parameters as plain (replicated) arrays: `load_run` reads them on any machine.
        path = self.checkpointer.save(
            env_steps, state, jax.device_get(state.agent.params), meta,
            record["train"],
        )
        if self.primary:
            write_json(self.run_dir / SPEC_FILE, spec.to_dict(), sort_keys=True)
        return str(path)


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
    state = checkpointer.restore_state(step, state)
    state = jax.device_put(state, state_shardings(state, mesh))  # every leaf as the mesh puts it
    evaluations, learner_evaluations = (
        [e for e in _read_evaluations(run_dir, name) if e["env_steps"] <= step]
        for name in (EVAL_FILE, LEARNERS_FILE)
    )
    return state, evaluations, learner_evaluations


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
    evaluators = learners.agent_evaluators(setup, env, held_out_env)

    start = int(state.iteration)
    env_steps = start * config.env_steps_per_iteration
    primary = jax.process_index() == 0
    logger = RunLogger(run_dir, config, env_steps, int(state.sgd_steps), progress, primary)
    try:
        iteration_fn, learning_fn, evaluators = compile_all(
            make_iteration(setup, mesh),
            learners.make_learning(setup, mesh) if setup.learners else None,
            state, evaluators, learners.actors(setup, state), eval_key,
        )
        recorder = RunRecorder(run_dir, setup, checkpointer, evaluators, eval_key, evaluations,
                               learner_evaluations, started, logger)
        logger.compiled(recorder.wall())
        last_checkpoint = str(checkpointer.path(env_steps))
        # The untrained policy's figures, once: a run resumed from its step-0 checkpoint kept
        # them, and a second copy would weigh in eval.json's paper score.
        if start == 0 and not evaluations:
            last_checkpoint = recorder.save(state, 0, recorder.evaluate(state, 0))
        pending: list[tuple[int, dict[str, Any]]] = []
        for it in range(start, config.iterations):
            state, metrics = learners.run_iteration(iteration_fn, learning_fn, state)
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
