"""Learner speed across depth: the shipped residual-block loop against the unrolled network.

Per depth, one SGD update (the trainer's: actor and α, then the critic, Adam, on one batch of
the task's sizes, without the replay sampling) is built for the shipped `BlockScan`
(`crl.train.networks.default_block_scan()`), for the fully unrolled network (`UNROLLED`, the
paper's code: no loop, compile time growing with depth) and for any `--candidates`; each is
compiled ahead of time (timed, after an untimed warm-up compile) and then called in alternating
rounds, one call each per round in an order that reverses every round, until `rounds` rounds
and `seconds` have passed. On a shared machine load comes and goes: alternation makes every
variant see the same load, and medians (of the times and of the per-round ratios) discard the
rounds it spiked in. The load average is recorded with every depth.

Every update compiles as the trainer compiles its learning program (`learner_jit`: XLA's
default options); `shipped_env_options` is the shipped loop under the env's options
(`crl.sim.env.jit`, fusion emitters off), how the trainer compiled its updates when one program
held the env and the learner.

Per depth it also times the JAX inference backend's `act` (the jitted deterministic actor,
batch 1) under the same choices, alternating likewise. Then, in situ, whole training iterations
(the paper preset's unroll and UTD, `--iteration-envs` envs, at `--iteration-depth`): the
trainer's two programs (`make_iteration`: collection under the env's options, learning under
XLA's) against the same iteration as one program under the env's options, alternating. Results:
bench/results/learner_speed_<device>.json and .png (per-update, compile and inference time
against depth).

    python bench/learner_speed.py                       # ant sizes, depths 4..256, iterations at 64
    python bench/learner_speed.py --candidates 2:dots 1:none   # more choices in the same rounds
    python bench/learner_speed.py --quick               # smoke test: seconds, tiny sizes
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import platform
import re
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from importlib import metadata
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from bench_cli import BenchConfigError, require_at_least_one, run_cli

from crl.core.atomic import write_atomic, write_json
from crl.sim import tasks
from crl.sim.env import jit as env_jit
from crl.sim.setup import setup_jax
from crl.train import losses
from crl.train.agent import Iteration, iteration_steps, learner_jit
from crl.train.config import PAPER, NetworkConfig, TrainConfig, validate
from crl.train.networks import (
    UNROLLED,
    Actor,
    BlockScan,
    Encoder,
    Networks,
    default_block_scan,
    deterministic_action,
    init_params,
)

RESULTS = Path(__file__).parent / "results"
PACKAGES = ("jax", "jaxlib", "flax", "optax")
SHIPPED, REFERENCE = "shipped", "unrolled"
ENV_OPTIONS = "shipped_env_options"  # the shipped loop compiled as env code
SPLIT, ONE_PROGRAM = "two_programs", "one_program"  # the in-situ iteration's variants


@dataclass(frozen=True)
class Config:
    """Per-update and compile time of the shipped block loop against the unrolled network."""

    task: str = "ant"
    """Task whose observation, action and goal sizes the networks take."""
    depths: tuple[int, ...] = (4, 16, 64, 256)
    width: int = 256
    batch_size: int = 256
    candidates: tuple[str, ...] = ()
    """More BlockScan choices to time in the same rounds, as UNROLL:REMAT (`2:dots`)."""
    rounds: int = 15
    """Least rounds per depth (one call of every variant a round)."""
    seconds: float = 30.0
    """Least seconds of rounds per depth (more rounds at small depths, where calls are short)."""
    max_rounds: int = 400
    inference_seconds: float = 5.0
    """Least seconds of alternating batch-1 `act` calls per depth (the JAX backend's)."""
    unrolled_max_depth: int = 256
    """Deeper than this, the unrolled reference is not compiled (its compile takes minutes)."""
    iteration_depth: int = 64
    """Time whole training iterations at this depth (0: skip)."""
    iteration_envs: int = 256
    iteration_rounds: int = 2
    """Timed iterations of each variant, after its untimed prefill."""
    seed: int = 0
    out: Path | None = None
    """Output JSON, the plot beside it (.png); default bench/results/learner_speed_<device>.json."""
    quick: bool = False
    """Smoke test: reacher, depths 4 and 8, width 32, batch 32, a few rounds, 4-env iterations."""


def parse_block_scan(text: str) -> BlockScan:
    """`UNROLL:REMAT` (`2:dots`, `0:none` = unrolled) as a BlockScan."""
    match = re.fullmatch(r"(\d+):(\w+)", text)
    if not match:
        raise BenchConfigError(f"candidates: {text!r} is not UNROLL:REMAT, e.g. 2:dots")
    try:
        return BlockScan(int(match.group(1)), match.group(2))
    except ValueError as e:
        raise BenchConfigError(f"candidates: {e}") from None


def label(scan: BlockScan) -> str:
    return f"{scan.unroll}:{scan.remat}"


def make_update(nets: Networks, tx: optax.GradientTransformation) -> Callable[..., Any]:
    """One SGD step as the trainer takes it (actor and α first, then the critic, same batch)."""
    target_entropy = losses.target_entropy(nets.actor.action_dim, PAPER.algo.entropy_scale)

    def update(state: tuple, batch: losses.Batch, key: jax.Array) -> tuple[tuple, jax.Array]:
        params, log_alpha, actor_opt, critic_opt, alpha_opt = state
        critic = {"sa_encoder": params["sa_encoder"], "g_encoder": params["g_encoder"]}
        (_, (log_prob, _)), actor_grad = jax.value_and_grad(losses.actor_loss, has_aux=True)(
            params["actor"], critic, log_alpha, nets, batch, key
        )
        alpha_grad = jax.grad(losses.alpha_loss)(log_alpha, log_prob, target_entropy)
        updates, actor_opt = tx.update(actor_grad, actor_opt)
        actor = optax.apply_updates(params["actor"], updates)
        updates, alpha_opt = tx.update(alpha_grad, alpha_opt)
        log_alpha = optax.apply_updates(log_alpha, updates)
        (loss, _), critic_grad = jax.value_and_grad(losses.critic_loss, has_aux=True)(
            critic, nets, batch, PAPER.algo.logsumexp_penalty
        )
        updates, critic_opt = tx.update(critic_grad, critic_opt)
        critic = optax.apply_updates(critic, updates)
        return ({"actor": actor, **critic}, log_alpha, actor_opt, critic_opt, alpha_opt), loss

    return update


@dataclass
class Variant:
    """One compiled update and its state, carried from call to call as in training."""

    scan: BlockScan
    compiled: Any
    state: tuple
    compile_s: float
    wall_s: list[float] = dataclasses.field(default_factory=list)
    cpu_s: list[float] = dataclasses.field(default_factory=list)

    def call(self, batch: losses.Batch, key: jax.Array) -> None:
        t, c = time.perf_counter(), time.process_time()
        self.state, loss = self.compiled(self.state, batch, key)
        jax.block_until_ready(loss)
        self.wall_s.append(time.perf_counter() - t)
        self.cpu_s.append(time.process_time() - c)


def build(scan: BlockScan, network: NetworkConfig, dims: tuple[int, int, int], batch: losses.Batch,
          key: jax.Array, compile_as: Callable[..., Any] = learner_jit) -> Variant:
    obs_dim, act_dim, goal_dim = dims
    nets = Networks(
        Actor(network, act_dim, scan), Encoder(network, scan), Encoder(network, scan)
    )
    tx = optax.adam(PAPER.algo.actor_lr)
    # Every BlockScan draws the same initial parameters (tested); a looped init compiles in
    # seconds where the unrolled one takes minutes at depth 256.
    looped = BlockScan(1, "none")
    init_nets = Networks(
        Actor(network, act_dim, looped), Encoder(network, looped), Encoder(network, looped)
    )
    params = jax.jit(init_params, static_argnums=(0, 2, 3))(
        init_nets, jax.random.PRNGKey(0), obs_dim, goal_dim
    )
    critic = {"sa_encoder": params["sa_encoder"], "g_encoder": params["g_encoder"]}
    log_alpha = jnp.zeros((), jnp.float32)
    state = (params, log_alpha, tx.init(params["actor"]), tx.init(critic), tx.init(log_alpha))
    fn = compile_as(make_update(nets, tx), donate_argnums=0)
    t = time.perf_counter()
    compiled = fn.lower(state, batch, key).compile()
    compile_s = time.perf_counter() - t
    variant = Variant(scan, compiled, state, compile_s)
    variant.call(batch, key)  # first-call costs (allocation, page faults) are not timed
    variant.wall_s.clear()
    variant.cpu_s.clear()
    return variant


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def summary(v: Variant) -> dict[str, Any]:
    wall = np.asarray(v.wall_s) * 1e3
    return {
        "block_scan": dataclasses.asdict(v.scan),
        "compile_s": round(v.compile_s, 2),
        "update_ms": round(float(np.median(wall)), 2),
        "update_ms_p25_p75": [round(float(x), 2) for x in np.percentile(wall, [25, 75])],
        "update_cpu_ms": round(statistics.median(v.cpu_s) * 1e3, 2),
        "calls": len(v.wall_s),
    }


def measure_depth(config: Config, depth: int, dims: tuple[int, int, int],
                  scans: dict[str, BlockScan]) -> dict[str, Any]:
    """Every variant's update at `depth` in alternating rounds; `ENV_OPTIONS` beside them."""
    network = NetworkConfig(depth=depth, width=config.width)
    rng = np.random.default_rng(config.seed)
    obs_dim, act_dim, goal_dim = dims
    b = config.batch_size
    batch = losses.Batch(
        jnp.asarray(rng.normal(size=(b, obs_dim)), jnp.float32),
        jnp.asarray(rng.uniform(-1, 1, size=(b, act_dim)), jnp.float32),
        jnp.asarray(rng.normal(size=(b, goal_dim)), jnp.float32),
    )
    key = jax.random.PRNGKey(config.seed)
    load_before = load()
    variants: dict[str, Variant] = {}
    for name, scan in {**scans, ENV_OPTIONS: scans[SHIPPED]}.items():
        if name == REFERENCE and depth > config.unrolled_max_depth:
            continue
        variants[name] = build(scan, network, dims, batch, key,
                               env_jit if name == ENV_OPTIONS else learner_jit)
        print(f"depth {depth:>5} {name:>9} ({label(scan)}): compiled in "
              f"{variants[name].compile_s:.1f} s", flush=True)
    names = list(variants)
    start, rounds = time.perf_counter(), 0
    while rounds < config.max_rounds and (
        rounds < config.rounds or time.perf_counter() - start < config.seconds
    ):
        for name in names if rounds % 2 == 0 else names[::-1]:
            variants[name].call(batch, key)
        rounds += 1
    row: dict[str, Any] = {
        "depth": depth,
        "rounds": rounds,
        "load_before": load_before,
        "load_after": load(),
        "variants": {name: summary(v) for name, v in variants.items()},
    }
    if REFERENCE in variants:
        ref = variants[REFERENCE]
        for name, v in variants.items():
            if name == REFERENCE:
                continue
            paired = [a / r for a, r in zip(v.wall_s, ref.wall_s, strict=True)]
            row["variants"][name] |= {
                "time_ratio_to_unrolled": round(
                    statistics.median(v.wall_s) / statistics.median(ref.wall_s), 3
                ),
                "paired_time_ratio_to_unrolled": round(statistics.median(paired), 3),
                "compile_ratio_to_unrolled": round(v.compile_s / ref.compile_s, 3),
            }
    for name, s in row["variants"].items():
        ratio = s.get("paired_time_ratio_to_unrolled")
        print(f"depth {depth:>5} {name:>9}: {s['update_ms']:9.1f} ms/update"
              + (f"  ×{ratio:.3f} of unrolled (paired median)" if ratio else "")
              + f"  compile {s['compile_s']:.1f} s  load {row['load_after'][0]}", flush=True)
    row["inference"] = measure_inference(config, network, dims, scans)
    return row


def measure_inference(config: Config, network: NetworkConfig, dims: tuple[int, int, int],
                      scans: dict[str, BlockScan]) -> dict[str, Any]:
    """The JAX backend's `act` (jitted deterministic actor, batch 1) under each choice, in
    alternating rounds for `inference_seconds`: what `crl-run --backend jax` runs."""
    obs_dim, act_dim, goal_dim = dims
    obs, goal = jnp.ones((1, obs_dim)), jnp.ones((1, goal_dim))
    params = jax.jit(Actor(network, act_dim, BlockScan(1, "none")).init)(
        jax.random.PRNGKey(0), obs, goal
    )["params"]
    fns, compile_s = {}, {}
    for name, scan in scans.items():
        actor = Actor(network, act_dim, scan)
        t = time.perf_counter()
        fns[name] = jax.jit(partial(deterministic_action, actor)).lower(params, obs, goal).compile()
        compile_s[name] = time.perf_counter() - t
        jax.block_until_ready(fns[name](params, obs, goal))
    times: dict[str, list[float]] = {name: [] for name in fns}
    names, start, rounds = list(fns), time.perf_counter(), 0
    while rounds < 20 or time.perf_counter() - start < config.inference_seconds:
        for name in names if rounds % 2 == 0 else names[::-1]:
            t = time.perf_counter()
            jax.block_until_ready(fns[name](params, obs, goal))
            times[name].append(time.perf_counter() - t)
        rounds += 1
    out: dict[str, Any] = {"batch": 1, "rounds": rounds, "variants": {
        name: {"act_ms": round(statistics.median(t) * 1e3, 3),
               "compile_s": round(compile_s[name], 2)} for name, t in times.items()
    }}
    if REFERENCE in times:
        for name, t in times.items():
            if name != REFERENCE:
                paired = [a / r for a, r in zip(t, times[REFERENCE], strict=True)]
                out["variants"][name]["paired_time_ratio_to_unrolled"] = round(
                    statistics.median(paired), 3)
    print(f"depth {network.depth:>5} inference (batch 1): " + ", ".join(
        f"{n} {v['act_ms']:.3f} ms" for n, v in out["variants"].items()), flush=True)
    return out


def iteration_config(config: Config, depth: int) -> TrainConfig:
    """The paper preset (its unroll and UTD) on `iteration_envs` envs, training from its second
    iteration (a buffer of 4 unrolls: the sizes of what an SGD step reads do not depend on it)."""
    envs, unroll = config.iteration_envs, PAPER.replay.unroll_length
    if config.quick:
        unroll = 8  # 4 envs: a batch of 32 fits the buffer from the second iteration
    replay = dataclasses.replace(PAPER.replay, num_envs=envs, unroll_length=unroll,
                                 buffer_steps=4 * unroll, min_replay_steps=unroll + 1)
    if config.quick:
        replay = dataclasses.replace(replay, env_steps_per_update=envs * unroll / 2)
    train = dataclasses.replace(
        PAPER, task=config.task, total_steps=(2 + config.iteration_rounds) * envs * unroll,
        network=NetworkConfig(depth=depth, width=config.width),
        algo=dataclasses.replace(PAPER.algo, batch_size=config.batch_size), replay=replay,
        eval=dataclasses.replace(PAPER.eval, held_out=False),
    )
    validate(train, tasks.TASKS)
    return train


def one_program(setup: Any) -> Any:
    """The iteration as one program under the env's options, as the trainer built it before
    it split collection from learning."""
    return env_jit(Iteration(*iteration_steps(setup)), donate_argnums=0)


def measure_iteration(config: Config, depth: int) -> dict[str, Any]:
    """Whole training iterations at `depth`: the trainer's two programs against one program,
    each compiled (timed) and run once untimed (the prefill, collection only), then called in
    alternating rounds, each of which trains."""
    from crl.train.agent import init_state, make_iteration, make_setup

    train = iteration_config(config, depth)
    setup = make_setup(train, tasks.make(config.task, dr="train"))
    iteration = make_iteration(setup)
    load_before = load()
    compiled, states, compile_s = {}, {}, {}
    for name in (SPLIT, ONE_PROGRAM):
        state = jax.block_until_ready(init_state(setup))
        t = time.perf_counter()
        compiled[name] = (iteration.compile(state) if name == SPLIT
                          else one_program(setup).lower(state).compile())
        compile_s[name] = time.perf_counter() - t
        states[name], metrics = compiled[name](state)  # the prefill: collection only
        assert not bool(jax.device_get(metrics["trained"]))
        print(f"iteration at depth {depth} ({name}): compiled in {compile_s[name]:.1f} s",
              flush=True)
    times: dict[str, list[float]] = {name: [] for name in compiled}
    for r in range(config.iteration_rounds):
        for name in list(compiled) if r % 2 == 0 else list(compiled)[::-1]:
            t = time.perf_counter()
            states[name], metrics = compiled[name](states[name])
            jax.block_until_ready(metrics)
            times[name].append(time.perf_counter() - t)
            assert bool(jax.device_get(metrics["trained"]))
    env_steps = train.env_steps_per_iteration
    variants = {name: {"compile_s": round(compile_s[name], 2),
                       "iteration_s": round(statistics.median(t), 3),
                       "iteration_s_all": [round(x, 3) for x in t],
                       "env_steps_per_s": round(env_steps / statistics.median(t), 1)}
                for name, t in times.items()}
    paired = [a / b for a, b in zip(times[SPLIT], times[ONE_PROGRAM], strict=True)]
    variants[SPLIT]["paired_time_ratio_to_one_program"] = round(statistics.median(paired), 3)
    row = {
        "depth": depth,
        "block_scan": dataclasses.asdict(default_block_scan()),
        "num_envs": train.replay.num_envs,
        "unroll_length": train.replay.unroll_length,
        "env_steps_per_iteration": env_steps,
        "sgd_steps_per_iteration": train.sgd_steps_per_iteration,
        "rounds": config.iteration_rounds,
        "variants": variants,
        "load_before": load_before,
        "load_after": load(),
    }
    print(f"iteration at depth {depth}: " + ", ".join(
        f"{n} {v['iteration_s']:.2f} s ({v['env_steps_per_s']:,.0f} env steps/s)"
        for n, v in variants.items()), flush=True)
    return row


def machine() -> dict[str, Any]:
    dev = jax.devices()[0]
    info: dict[str, Any] = {"platform": dev.platform, "kind": dev.device_kind,
                            "count": jax.device_count(), "cpu_cores": os.cpu_count(),
                            "cpu_model": platform.processor()}
    try:
        text = Path("/proc/cpuinfo").read_text()
        if match := re.search(r"^model name\s*:\s*(.+)$", text, re.MULTILINE):
            info["cpu_model"] = match.group(1).strip()
        mem = re.search(r"^MemTotal:\s*(\d+) kB", Path("/proc/meminfo").read_text(), re.MULTILINE)
        if mem:
            info["memory_gib"] = round(int(mem.group(1)) / 2**20, 1)
    except OSError:
        pass
    return info


def device_slug(info: dict[str, Any]) -> str:
    if info["platform"] == "cpu":
        return "cpu"
    return re.sub(r"[^a-z0-9]+", "-", info["kind"].lower()).strip("-") or info["platform"]


def plot(payload: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

    fig, (ax_t, ax_c, ax_i) = plt.subplots(1, 3, figsize=(15, 4.2))
    names = sorted({n for r in payload["results"] for n in r["variants"]},
                   key=lambda n: (n != SHIPPED, n != REFERENCE, n))
    for name in names:
        rows = [r for r in payload["results"] if name in r["variants"]]
        depths = [r["depth"] for r in rows]
        style = {"marker": "o", "lw": 2} if name in (SHIPPED, REFERENCE) else {"marker": ".",
                                                                              "ls": "--"}
        scan = rows[0]["variants"][name]["block_scan"]
        text = f"{name} ({scan['unroll']}:{scan['remat']})"
        ax_t.plot(depths, [r["variants"][name]["update_ms"] for r in rows], label=text, **style)
        ax_c.plot(depths, [r["variants"][name]["compile_s"] for r in rows], label=text, **style)
        if name in rows[0]["inference"]["variants"]:  # inference runs no env options
            ax_i.plot(depths, [r["inference"]["variants"][name]["act_ms"] for r in rows],
                      label=text, **style)
    if it := payload.get("iteration"):
        ax_c.plot([it["depth"]], [it["variants"][SPLIT]["compile_s"]], "k*", ms=12,
                  label=f"whole training iteration ({SPLIT}, {SHIPPED})")
    for ax, ylabel in ((ax_t, "ms per SGD update (median)"), (ax_c, "compile time (s)"),
                       (ax_i, "ms per JAX-backend act, batch 1 (median)")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("depth (Dense layers in residual blocks)")
        ax.set_ylabel(ylabel)
        ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        for axis in (ax.xaxis, ax.yaxis):
            axis.set_major_formatter(ScalarFormatter())
            axis.set_minor_formatter(NullFormatter())
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    c, m = payload["config"], payload["machine"]
    where = m["cpu_model"] if m["platform"] == "cpu" else m["kind"]
    fig.suptitle(f"learner speed: {c['task']} sizes, width {c['width']}, batch {c['batch_size']}"
                 f" ({where}, load {payload['load_at_start'][0]} at start)", fontsize=10)
    fig.tight_layout()
    write_atomic(path, lambda tmp: fig.savefig(tmp, dpi=110))
    plt.close(fig)


def main(config: Config) -> dict[str, Any]:
    setup_jax()  # XLA flags and the MJX patch, before jax compiles (crl.sim.setup)
    if config.quick:
        config = dataclasses.replace(
            config, task="reacher", depths=(4, 8), width=32, batch_size=32, rounds=3,
            seconds=0.0, inference_seconds=0.0, iteration_depth=4, iteration_envs=4,
            iteration_rounds=1,
        )
    if config.task not in tasks.TASKS:
        raise BenchConfigError(f"task: unknown {config.task!r}; choose from "
                               f"{', '.join(tasks.TASKS)}")
    require_at_least_one(config, "width", "batch_size", "rounds", "max_rounds", "iteration_envs",
                         "iteration_rounds")
    for depth in (*config.depths, *([config.iteration_depth] if config.iteration_depth else [])):
        try:
            NetworkConfig(depth=depth).num_blocks  # noqa: B018
        except ValueError as e:
            raise BenchConfigError(str(e)) from None
    scans = {SHIPPED: default_block_scan(), REFERENCE: UNROLLED}
    scans |= {label(s): s for s in map(parse_block_scan, config.candidates)}
    spec = tasks.make(config.task, dr="off").spec
    dims = (spec.obs_dim, spec.act_dim, spec.goal_dim)
    info = machine()
    out = config.out or RESULTS / f"learner_speed_{device_slug(info)}.json"
    payload: dict[str, Any] = {
        "benchmark": "learner_speed",
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": info,
        "versions": {"python": platform.python_version(),
                     **{p: metadata.version(p) for p in PACKAGES}},
        "backend": jax.default_backend(),
        "shipped": dataclasses.asdict(scans[SHIPPED]),
        "config": {**dataclasses.asdict(config), "out": str(out),
                   "obs_dim": dims[0], "act_dim": dims[1], "goal_dim": dims[2]},
        "load_at_start": load(),
        "results": [],
    }
    # A first compile pays one-time costs (XLA's caches, code loading) that would otherwise
    # land on whichever variant compiles first (not worth its seconds in the smoke test).
    if not config.quick:
        build(scans[SHIPPED], NetworkConfig(depth=4, width=config.width), dims,
              losses.Batch(jnp.zeros((2, dims[0])), jnp.zeros((2, dims[1])),
                           jnp.zeros((2, dims[2]))), jax.random.PRNGKey(0))
    for depth in config.depths:
        payload["results"].append(measure_depth(config, depth, dims, scans))
        write_json(out, payload)  # what was measured survives a run stopped later
    if config.iteration_depth:
        payload["iteration"] = measure_iteration(config, config.iteration_depth)
    payload["load_at_end"] = load()
    write_json(out, payload)
    plot(payload, out.with_suffix(".png"))
    print(f"wrote {out} and {out.with_suffix('.png')}")
    return payload


if __name__ == "__main__":
    run_cli(main, Config, "learner_speed")
