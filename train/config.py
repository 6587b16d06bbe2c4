"""Training configuration: frozen dataclasses, the paper's preset and the CPU quickstart's.

Everything a run needs to be reproduced lives here and is written to `runs/<name>/config.json`.
`validate` runs before anything is compiled, so a config that cannot work fails in a second with a
message naming the field and what to change. It imports neither jax nor flax: a config is a
plain description (`crl.train.networks` builds the networks `NetworkConfig` describes).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, NoReturn

import tyro
from tyro.constructors import PrimitiveConstructorSpec

from crl.core.spec import BLOCK_LAYERS
from crl.core.usage import ConfigError, default

PresetName = Literal["paper", "quick"]
# What a run trains under, in the modes of `crl.sim.tasks.make(task, dr=...)`: the nominal robot
# or the task's training ranges (`held-out` is for evaluation only).
DrSetting = Literal["off", "train"]
# MJX implementation that steps the envs (`crl.sim.physics`).
PhysicsSetting = Literal["jax", "warp"]
# Compute dtype of the networks' matmuls and activations (`crl.train.networks.COMPUTE_DTYPES`).
DType = Literal["fp32", "bf16"]
# config.json's layout (`TrainConfig.to_dict`); bumped when it changes. A run directory of
# another format is refused: there is no upgrade path before 1.0.
RUN_FORMAT = "crl-run/1"
# An evaluation's episodes at most: `crl.train.checkpoint.best_score` ranks by at-the-end success
# with a tie-break below 1/1e6, one rate step of that many episodes.
MAX_EVAL_EPISODES = 100_000
# NetworkConfig's per-side overrides of the shared depth and width.
SIDE_FIELDS = ("actor_depth", "actor_width", "critic_depth", "critic_width")


def _depth_list(args: list[str]) -> tuple[int, ...]:
    """`4,64` (as the sweep tool takes its values) → (4, 64); validate() checks the depths."""
    try:
        return tuple(int(p) for p in args[0].split(",") if p.strip())
    except ValueError:
        message = f"learners: {args[0]!r} is not a comma-separated list of depths"
        raise ConfigError(message) from None


# `--learners 4,64` on the command line, a tuple of ints in the config (a JSON list on disk).
Depths = Annotated[
    tuple[int, ...],
    PrimitiveConstructorSpec(
        nargs=1,
        metavar="D,D,...",
        instance_from_str=_depth_list,
        is_instance=lambda x: isinstance(x, tuple) and all(_is_int(d) for d in x),
        str_from_instance=lambda x: [",".join(str(d) for d in x)],
    ),
]


@dataclass(frozen=True)
class NetworkConfig:
    """Shape of the actor and of both critic encoders, φ(s, a) and ψ(g).

    --depth and --width size both; --actor-* and --critic-* override one side, for the paper's
    scaling of the actor against the critic.
    """

    depth: int = 4
    """Dense layers inside residual blocks, of the actor and the critic (a multiple of 4)."""
    width: int = 256
    """Hidden width of the actor and the critic."""
    repr_dim: int = 64
    """Size of the critic's representations φ(s, a) and ψ(g)."""
    residual: bool = True
    """Residual connections around each block of Dense layers (the paper's networks)."""
    dtype: DType = "fp32"
    """Compute dtype of matmuls and activations (`bf16`: mixed precision; parameters, LayerNorm
    statistics and the networks' outputs stay float32)."""
    input_norm: bool = False
    """Standardise the networks' inputs with the prefill's statistics, fixed for the run: each
    component less its mean, each observation field (and the goal) divided by its spread. Adam
    steps every weight alike, so an input of small spread (positions in metres) is otherwise
    learnt from slowly. Folded into the first layer on export."""
    actor_depth: Annotated[int | None, default("--depth")] = None
    """The actor's depth."""
    actor_width: Annotated[int | None, default("--width")] = None
    """The actor's width."""
    critic_depth: Annotated[int | None, default("--depth")] = None
    """Depth of both critic encoders."""
    critic_width: Annotated[int | None, default("--width")] = None
    """Width of both critic encoders."""

    # `Actor` builds from `.actor` and `Encoder` from `.critic`, so every builder can pass the
    # whole config.
    @property
    def actor(self) -> NetworkConfig:
        """The actor's shape, overrides resolved (this config itself when it has none)."""
        return self._side(self.actor_depth, self.actor_width)

    @property
    def critic(self) -> NetworkConfig:
        """The critic encoders' shape, overrides resolved."""
        return self._side(self.critic_depth, self.critic_width)

    def _side(self, depth: int | None, width: int | None) -> NetworkConfig:
        if not self.overrides():
            return self
        return dataclasses.replace(
            self, depth=self.depth if depth is None else depth,
            width=self.width if width is None else width,
            actor_depth=None, actor_width=None, critic_depth=None, critic_width=None,
        )

    def overrides(self) -> dict[str, int]:
        """The per-side sizes that are set (empty: actor and critic share depth and width)."""
        return {k: v for k in SIDE_FIELDS if (v := getattr(self, k)) is not None}

    @property
    def num_blocks(self) -> int:
        if self.depth <= 0 or self.depth % BLOCK_LAYERS:
            # `validate` says this first for a training run; this guards every
            # other builder of a network (evaluation, export, tests) against silent truncation.
            raise ValueError(
                f"depth: {self.depth} is not a positive multiple of {BLOCK_LAYERS} (Dense layers "
                f"inside residual blocks of {BLOCK_LAYERS})"
            )
        return self.depth // BLOCK_LAYERS


@dataclass(frozen=True)
class AlgoConfig:
    """Contrastive RL losses and optimisers (the paper's Table 2)."""

    batch_size: int = 512
    """Transitions per SGD step; the InfoNCE logits are batch_size × batch_size."""
    gamma: float = 0.99
    """Discount of the future-goal relabeling: offset k ≥ 1 is drawn with probability ∝ gamma^k."""
    logsumexp_penalty: float = 0.1
    """Weight of mean(logsumexp²) added to the forward InfoNCE loss."""
    entropy_scale: float = 0.5
    """Target entropy of the α auto-tuning is -entropy_scale · action size."""
    actor_lr: float = 3e-4
    """Learning rate of the actor's Adam."""
    critic_lr: float = 3e-4
    """Learning rate of the critic encoders' Adam."""
    alpha_lr: float = 3e-4
    """Learning rate of the entropy coefficient α's Adam."""
    lr_decay: float = 1.0
    """The actor's and critic's learning rates fall along a cosine to this fraction of their
    value at the run's last SGD step (1.0: constant, the paper's): a run trained longer ends
    steadier, not still moving at full rate."""
    action_rate_penalty: float = 0.0
    """Weight of mean ‖π(s, g) − last action‖² in the actor loss (0: the paper's loss); needs the
    task's `last_action` observation field."""
    temporal_penalty: float = 0.0
    """Weight of mean ‖π(s_t, g) − π(s_{t+1}, g)‖² (deterministic actions at consecutive states
    of an episode) in the actor loss: CAPS' temporal smoothness term (0: the paper's loss)."""
    spatial_penalty: float = 0.0
    """Weight of mean ‖π(s, g) − π(s + δ, g)‖² (deterministic actions at nearby observations) in
    the actor loss: CAPS' spatial smoothness term (0: the paper's loss)."""
    spatial_sigma: float = 0.05
    """The spatial term's δ: this fraction of each observation component's spread over the
    batch (its standard deviation), Gaussian."""


@dataclass(frozen=True)
class ReplayConfig:
    """Data collection and the on-device trajectory buffer (time × env)."""

    num_envs: int = 512
    """Environments stepped in parallel by the stochastic actor."""
    unroll_length: int = 62
    """Steps each environment takes per training iteration (one collect)."""
    env_steps_per_update: float = 40.0
    """Update-to-data ratio as env steps per SGD step (the paper's 1:40); SGD steps per
    iteration = round(num_envs · unroll_length / env_steps_per_update), at least 1."""
    buffer_steps: int = 10_000
    """Buffer capacity in time steps per environment (the oldest are overwritten)."""
    min_replay_steps: int = 1_000
    """Time steps per environment collected before the first SGD step."""


@dataclass(frozen=True)
class EvalConfig:
    """Periodic evaluation with the deterministic actor on freshly drawn starts and goals."""

    eval_every: int = 1_000_000
    """Env steps between evaluations (also where checkpoints are written)."""
    eval_episodes: int = 128
    """Episodes per evaluation, run in parallel."""
    held_out: bool = True
    """Also evaluate on the held-out domain-randomization ranges."""


@dataclass(frozen=True)
class TrainConfig:
    """One training run."""

    task: Annotated[str, tyro.conf.Positional, tyro.conf.arg(metavar="TASK")]
    """Task to train (crl.sim.tasks.TASKS)."""
    seed: int = 0
    """Seeds the networks' initialization, the envs' draws and every evaluation."""
    total_steps: int = 100_000_000
    """Env steps to train for, prefill included."""
    dr: DrSetting = "train"
    """Domain randomization while training: none (`off`) or the task's training ranges."""
    physics: PhysicsSetting = "jax"
    """MJX implementation stepping the envs: `jax` (any device) or `warp` (MuJoCo Warp; an NVIDIA
    GPU, `pip install "mujoco-mjx[warp]"`, one device)."""
    network: NetworkConfig = field(default_factory=NetworkConfig)
    algo: AlgoConfig = field(default_factory=AlgoConfig)
    replay: ReplayConfig = field(default_factory=ReplayConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    keep_checkpoints: int = 3
    """Most recent checkpoints kept (the best one by evaluation is kept as well)."""
    log_every: int = 20
    """Training iterations between console / TensorBoard updates."""
    learners: Annotated[Depths, default("none")] = ()
    """Depths of learner agents that never act: each trains on the very batches of the run's own
    agent (the collector, sized by --depth) and is evaluated beside it (learners.json), the
    paper's exploration-versus-expressivity experiment."""

    # Sizes derived from the fields above; the loop and config.json use these.
    @property
    def env_steps_per_iteration(self) -> int:
        return self.replay.num_envs * self.replay.unroll_length

    @property
    def sgd_steps_per_iteration(self) -> int:
        return max(1, round(self.env_steps_per_iteration / self.replay.env_steps_per_update))

    @property
    def iterations(self) -> int:
        return math.ceil(self.total_steps / self.env_steps_per_iteration)

    @property
    def prefill_iterations(self) -> int:
        """Iterations that only collect: SGD starts in the iteration that brings the buffer to
        min_replay_steps per env."""
        return math.ceil(self.replay.min_replay_steps / self.replay.unroll_length) - 1

    @property
    def sgd_steps_total(self) -> int:
        """SGD steps over the whole run: every iteration from the one that ends the prefill."""
        return max(1, self.iterations - self.prefill_iterations) * self.sgd_steps_per_iteration

    def to_dict(self) -> dict[str, Any]:
        """config.json's form: the format, every field, and the sizes derived from them."""
        out = {"format": RUN_FORMAT, **dataclasses.asdict(self)}
        out["learners"] = list(self.learners)
        out["derived"] = {
            "env_steps_per_iteration": self.env_steps_per_iteration,
            "sgd_steps_per_iteration": self.sgd_steps_per_iteration,
            "iterations": self.iterations,
            "prefill_iterations": self.prefill_iterations,
            "sgd_steps_total": self.sgd_steps_total,
        }
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Inverse of `to_dict` (config.json of a run); derived sizes are recomputed. A config of
        another format (an older crl's) is refused in one line."""
        found = data.get("format") if isinstance(data, dict) else None
        if found != RUN_FORMAT:
            raise ConfigError(
                f"config.json: a run of {'no format' if found is None else repr(found)}, from "
                f"another crl version (this one reads {RUN_FORMAT!r}); train it again with "
                "crl-train --out NEW_DIR, or use the crl version that wrote it"
            )
        try:
            return cls(
                task=data["task"],
                seed=data["seed"],
                total_steps=data["total_steps"],
                dr=data["dr"],  # validate() checks the value
                physics=data["physics"],
                network=NetworkConfig(**data["network"]),
                algo=AlgoConfig(**data["algo"]),
                replay=ReplayConfig(**data["replay"]),
                eval=EvalConfig(**data["eval"]),
                keep_checkpoints=data["keep_checkpoints"],
                log_every=data["log_every"],
                learners=tuple(data["learners"]),
            )
        except (KeyError, TypeError) as e:
            raise ConfigError(f"config.json: unreadable training config ({e})") from None


# The paper's step budget for each of its ten depth-scaling tasks (Wang et al., 2025: Table 7 of
# arXiv v4, "100M-400M, varying across tasks", read off the x-axes of its Figure 1), keyed by
# crl's name for the task: `paper_` + the paper's env id. Every other task gets the budget its
# code runs by default (`total_env_steps`, 100M).
PAPER_TOTAL_STEPS: dict[str, int] = {
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
}
PAPER_DEFAULT_STEPS = 100_000_000
# The paper's code evaluates once per epoch, 100 epochs a run, on 128 fresh episodes; a run's one
# number is the mean time at goal over its last five evaluations (`crl.train.evaluate`).
PAPER_EVALUATIONS = 100

# The paper's Table 2 (Table 7 in arXiv v4; Wang et al., 2025, after JaxGCRL): 512 envs, batch
# 512, UTD 1:40 (512 envs × 62-step unrolls, ~800 SGD steps), buffer 10k steps/env, prefill 1k,
# γ 0.99, Adam 3e-4, logsumexp penalty 0.1, width 256, representation 64, no domain
# randomization. Depth depends on the experiment; 64 is the depth of the paper's headline
# results. `preset("paper", task)` sets the task's step budget and evaluates 100 times a run.
PAPER = TrainConfig(
    task=tyro.MISSING,
    total_steps=PAPER_DEFAULT_STEPS,
    dr="off",
    network=NetworkConfig(depth=64, width=256, repr_dim=64, residual=True),
    eval=EvalConfig(
        eval_every=PAPER_DEFAULT_STEPS // PAPER_EVALUATIONS, eval_episodes=128, held_out=False
    ),
)

# What makes `reacher` learn on a 2-core CPU in a few minutes. A CPU lacks compute, not data:
# width 128 (half the cost of an SGD step at 256), a small buffer, UTD 1:32. γ 0.9 relabels with
# nearer futures, which the servo arm reaches in a few steps; a lower target entropy (-2·|A|)
# and a faster α keep exploration noise from blurring a 2 cm task. It trains under the task's
# training DR ranges: on the nominal arm the same recipe held 80% success and a 4.5 cm median
# final distance under the held-out ranges, with them 98-99% and 1.3-1.4 cm (bench/quickstart.py,
# bench/results/quickstart_cpu.json). The reacher observes its own last command (`last_action`);
# with nothing in the loss against fast action changes, the policy learns to alternate between
# two commands around the goal (a period-2 limit cycle through its own last command), so it
# reaches the goal and leaves it again. An action-rate term in the actor loss (weight · mean
# ‖a − last action‖²) removes that. Its weight was 0.5 until the held-out ranges became disjoint
# from training's (crl.sim.config: every held-out draw outside training, an action delay of 2
# steps that training never has); under those, 0.5 let the cycle come back as training went on:
# the exported (best) checkpoint ended 88% of held-out episodes at the goal (99% reached it at
# some step) and 80-90% of the closed loop's 20 goals. At 2.0, over seeds 0, 1 and 2, the best
# checkpoints end 97.2%, 97.9% and 96.7% of 1024 held-out episodes at the goal (the cycle is
# gone; what fails now is mostly an arm that stops short with its shoulder command near the
# servo's limit) and 20/20 goals in the closed loop; at 5.0 it learned slower and held 95.5%.
# Later checkpoints still drifted: the cycle's share of near-goal steps (the oscillation figure,
# crl.core.oscillation) grew with training, 0.18 -> 0.32 -> 0.49 over seed 0's last three
# checkpoints, and its last ended 89.4% of 1024 held-out episodes at the goal. Two smoothness
# terms in the actor loss (CAPS, Mysore et al. 2021) stop that: a temporal one, weight 2.0, on
# the policy's change between consecutive states, and a spatial one, weight 10.0, on its change
# under a perturbation of 0.2x each observation component's spread, which bounds the gain a
# stiffer, delayed servo turns into a cycle. With both, over seeds 0-2, every checkpoint from
# 300k steps on ends 96.6-99.5% of held-out episodes at the goal (oscillation 0.01-0.18) and the
# nominal target comes at 300k steps (bench/results/hold_cpu.json: without them, the temporal
# term alone, both).
# The misses left are goals behind the arm that the elbow's side puts past the shoulder's stop;
# a shoulder turning +-2 pi removes them (bench/results/hold_cpu_shoulder_2pi.json) but doubles
# the shoulder's action scale, and with it the loop gain: the hold got worse, so the model keeps
# +-pi. Held-out evaluations run beside training's, for the learning curve; they never pick the
# exported checkpoint (crl.train.checkpoint.best_score).
# Trained twice as long (1.2M steps) at a constant rate, the cycle came back late: the
# oscillation figure climbed to 0.36-0.47 and the last checkpoints of seeds 0 and 2 ended 88.0%
# and 84.7% of held-out episodes at the goal. The actor's and critic's rates now fall along a
# cosine to a tenth by the run's last step (lr_decay 0.1), so a longer run ends steadier, not
# still moving at full rate: at 1.2M steps every checkpoint from 300k on, seeds 0-2, ends
# 94.8-99.7% at the goal (bench/results/hold_long_cpu.json), at 600k 95.1-99.2% with the
# nominal target still at 300k (hold_cpu_lr_decay.json), and the actuator gain the policy holds
# under went from 1.25x to 2x (robustness_cpu_lr_decay.json).
QUICK = TrainConfig(
    task=tyro.MISSING,
    total_steps=600_000,
    dr="train",
    network=NetworkConfig(depth=4, width=128, repr_dim=64, residual=True),
    algo=AlgoConfig(batch_size=256, gamma=0.9, entropy_scale=2.0, alpha_lr=3e-3,
                    action_rate_penalty=2.0, temporal_penalty=2.0, spatial_penalty=10.0,
                    spatial_sigma=0.2, lr_decay=0.1),
    replay=ReplayConfig(
        num_envs=128,
        unroll_length=16,
        env_steps_per_update=32.0,
        buffer_steps=1_000,
        min_replay_steps=64,
    ),
    eval=EvalConfig(eval_every=100_000, eval_episodes=128, held_out=True),
    log_every=5,
)

PRESETS: dict[str, TrainConfig] = {"paper": PAPER, "quick": QUICK}

# Where a task needs a preset changed, and why (measured; a command-line flag still overrides):
# top-level fields by name, a nested config (`algo`, `network`) as a dict of its fields.
# `arm_reach`, quick: at the reacher's spatial weight (10) its policy ended 94.5% of episodes at
# the goal under the training ranges and 22% under the held-out ones: their 2-step action delay
# turns its corrections into a cycle of about ten steps, 2-25 cm wide. Weight 100 bounds the
# gain of those corrections: 98.4% and 48% (bench/results/hold_arm_cpu.json, docs/benchmarks.md
# "The second robot", which lists what else was tried).
# `reacher`, quick: standardised inputs (`NetworkConfig.input_norm`). On raw inputs (goal and
# fingertip in metres, spread about 0.1 m) the actor of every seed commanded the mean of the two
# elbow solutions for goals 150-175 degrees round, behind the shoulder's stop, from starts on
# the other side of the arm: the arm ended straight out the other way, 30 cm off, and the closed
# loops of 20 held-out goals ended 18/20 on some goal seeds. With them, seeds 0-2 reach 1079 of
# bench/goal_sweep.py's 1080 goals (bench/results/goal_sweep_reacher_input_norm_cpu.json) and
# learn faster. Not measured on `arm_reach`, which keeps raw inputs. The sharper response is a
# higher loop gain near the goal: at spatial weight 10 the near-goal cycle grew with training
# (one checkpoint of a 1.2M-step run 89.1% at the goal under the held-out ranges). Weight 30
# holds every checkpoint from 200k to 1.2M steps at 92.9% or more over seeds 0-2, the cycle
# about a third smaller (bench/results/hold_long_cpu_input_norm_spatial30.json).
TASK_PRESET_CHANGES: dict[tuple[str, str], dict[str, Any]] = {
    ("quick", "arm_reach"): {"algo": {"spatial_penalty": 100.0}},
    ("quick", "reacher"): {"network": {"input_norm": True}, "algo": {"spatial_penalty": 30.0}},
}


def preset(name: str, task: str, **changes: Any) -> TrainConfig:
    """A preset for `task`, with top-level fields replaced (nested ones via their dataclass).

    `paper` trains `task` for the paper's budget (`PAPER_TOTAL_STEPS`) and evaluates it
    `PAPER_EVALUATIONS` times.
    """
    if name not in PRESETS:
        raise ConfigError(f"preset: {name!r} is unknown; choose one of {sorted(PRESETS)}")
    config = dataclasses.replace(PRESETS[name], task=task)
    task_changes = {
        # A nested dataclass's changes come as a dict of its fields.
        field: dataclasses.replace(getattr(config, field), **value) if isinstance(value, dict)
        else value
        for field, value in TASK_PRESET_CHANGES.get((name, task), {}).items()
    }
    config = dataclasses.replace(config, **task_changes)
    if name == "paper":
        steps = PAPER_TOTAL_STEPS.get(task, PAPER_DEFAULT_STEPS)
        config = dataclasses.replace(
            config,
            total_steps=steps,
            eval=dataclasses.replace(config.eval, eval_every=steps // PAPER_EVALUATIONS),
        )
    return dataclasses.replace(config, **changes)


def validate(config: TrainConfig, tasks: tuple[str, ...] | None = None) -> None:
    """Raise ConfigError naming the first field that cannot work.

    `tasks` is the list of known tasks (crl.sim.tasks.TASKS); None skips the task check, for
    stand-in environments in tests.
    """
    if tasks is not None and config.task not in tasks:
        _fail("task", f"{config.task!r} is not a known task; choose one of {', '.join(tasks)}")
    _check_network(config.network)
    _check_learners(config.learners)
    _check_algo(config.algo)
    _check_replay(config.replay)
    _check_data_fits(config)
    _check_run(config)


def _fail(name: str, message: str) -> NoReturn:
    raise ConfigError(f"{name}: {message}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_network(n: NetworkConfig) -> None:
    """The shared sizes, then each side's override where one is set (None: the shared size)."""
    for name in ("depth", "actor_depth", "critic_depth"):
        depth = getattr(n, name)
        if depth is None:
            continue
        if not _is_int(depth) or depth <= 0 or depth % BLOCK_LAYERS:
            lower = BLOCK_LAYERS
            if _is_int(depth):
                lower = max(BLOCK_LAYERS, depth - depth % BLOCK_LAYERS)
            _fail(
                name,
                f"{depth} is not a positive multiple of {BLOCK_LAYERS} (Dense layers inside "
                f"residual blocks of {BLOCK_LAYERS}); use e.g. {lower} or {lower + BLOCK_LAYERS}",
            )
    for name in ("width", "actor_width", "critic_width", "repr_dim"):
        value = getattr(n, name)
        if value is not None and (not _is_int(value) or value <= 0):
            _fail(name, f"must be a positive integer, got {value}")


def _check_learners(learners: tuple[int, ...]) -> None:
    """Each learner's depth as a network depth, each depth once."""
    for depth in learners:
        if not _is_int(depth) or depth <= 0 or depth % BLOCK_LAYERS:
            _fail("learners", f"{depth} is not a positive multiple of {BLOCK_LAYERS}")
    if len(set(learners)) != len(learners):
        _fail("learners", f"{','.join(map(str, learners))} repeats a depth; give each once")


def _check_algo(a: AlgoConfig) -> None:
    """The losses' and optimisers' own values, each on its own."""
    if a.batch_size < 2:
        _fail("batch_size", f"InfoNCE needs at least 2 transitions per batch, got {a.batch_size}")
    if not 0.0 < a.gamma < 1.0:
        _fail("gamma", f"must be in (0, 1), got {a.gamma}")
    for name, rate in (("actor_lr", a.actor_lr), ("critic_lr", a.critic_lr),
                       ("alpha_lr", a.alpha_lr)):
        if not (math.isfinite(rate) and rate > 0):
            _fail(name, f"must be positive and finite, got {rate}")
    for name, weight in (("action_rate_penalty", a.action_rate_penalty),
                         ("temporal_penalty", a.temporal_penalty),
                         ("spatial_penalty", a.spatial_penalty),
                         ("spatial_sigma", a.spatial_sigma),
                         ("logsumexp_penalty", a.logsumexp_penalty),
                         ("entropy_scale", a.entropy_scale)):
        if not (math.isfinite(weight) and weight >= 0):
            _fail(name, f"must be >= 0 and finite, got {weight}")
    if not (math.isfinite(a.lr_decay) and 0.0 < a.lr_decay <= 1.0):
        _fail("lr_decay", f"must be in (0, 1], got {a.lr_decay}")


def _check_replay(r: ReplayConfig) -> None:
    """Collection sizes, and that an unroll and the prefill fit the buffer."""
    if r.num_envs < 1:
        _fail("num_envs", f"must be at least 1, got {r.num_envs}")
    if r.unroll_length < 1:
        _fail("unroll_length", f"must be at least 1, got {r.unroll_length}")
    if not (math.isfinite(r.env_steps_per_update) and r.env_steps_per_update > 0):
        _fail("env_steps_per_update", f"must be positive, got {r.env_steps_per_update}")
    if r.unroll_length > r.buffer_steps:
        _fail(
            "unroll_length",
            f"{r.unroll_length} steps do not fit a buffer of buffer_steps={r.buffer_steps}; "
            "raise --buffer-steps or lower --unroll-length",
        )
    if not 1 <= r.min_replay_steps <= r.buffer_steps:
        _fail(
            "min_replay_steps",
            f"must be between 1 and buffer_steps={r.buffer_steps}, got {r.min_replay_steps}",
        )


def _check_data_fits(c: TrainConfig) -> None:
    """A batch fits the buffer and the data collected before SGD starts; the run is at least
    one iteration long."""
    a, r = c.algo, c.replay
    capacity = r.buffer_steps * r.num_envs
    if a.batch_size > capacity:
        _fail(
            "batch_size",
            f"{a.batch_size} is larger than the replay buffer ({r.buffer_steps} steps × "
            f"{r.num_envs} envs = {capacity} transitions); lower --batch-size or raise "
            "--buffer-steps / --num-envs",
        )
    if a.batch_size > r.min_replay_steps * r.num_envs:
        _fail(
            "batch_size",
            f"{a.batch_size} is larger than the data collected before training starts "
            f"(min_replay_steps {r.min_replay_steps} × {r.num_envs} envs); lower --batch-size "
            "or raise --min-replay-steps",
        )
    if c.total_steps < c.env_steps_per_iteration:
        _fail(
            "total_steps",
            f"{c.total_steps} is less than one iteration ({r.num_envs} envs × "
            f"{r.unroll_length} steps = {c.env_steps_per_iteration}); raise --total-steps",
        )


def _check_run(c: TrainConfig) -> None:
    """Evaluation, checkpointing, logging and the environment's settings."""
    if c.eval.eval_every <= 0 or c.eval.eval_episodes <= 0:
        _fail("eval_every/eval_episodes", "must be positive")
    if c.eval.eval_episodes > MAX_EVAL_EPISODES:
        _fail("eval_episodes", f"at most {MAX_EVAL_EPISODES:,} (the best checkpoint's tie-break "
              f"needs that), got {c.eval.eval_episodes:,}")
    if c.keep_checkpoints < 1:
        _fail("keep_checkpoints", f"must be at least 1, got {c.keep_checkpoints}")
    if c.log_every < 1:
        _fail("log_every", f"must be at least 1, got {c.log_every}")
    if c.dr not in ("off", "train"):
        _fail("dr", f"{c.dr!r} is not 'off' or 'train'")
    if c.physics not in ("jax", "warp"):
        _fail("physics", f"{c.physics!r} is not 'jax' or 'warp'")


def validate_devices(config: TrainConfig, devices: int) -> None:
    """Raise ConfigError unless `devices` data-parallel devices split the run evenly: each
    holds num_envs / devices envs (and their buffer columns) and batch_size / devices rows."""
    for name, value in (("num_envs", config.replay.num_envs),
                        ("batch_size", config.algo.batch_size)):
        if value % devices:
            raise ConfigError(
                f"{name}: {value} is not divisible by --devices {devices}; use a multiple of "
                f"{devices} or fewer devices"
            )
