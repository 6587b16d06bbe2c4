"""Sweep one axis of the network or the recipe: one `crl-train` run per value and seed, one JSON,
the paper's plots.

The depth-scaling paper's figures are sweeps: time at goal against env steps for each depth,
and the final score against depth with the spread over seeds. This runs such a sweep with the
repo's own commands, one run at a time (each run uses the whole device), in a folder of run
directories:

    python bench/sweep.py humanoid --axis depth --values 4,16,64 --seeds 3 --steps 50000000
    python bench/sweep.py reacher --axis batch --values 256,1024 --preset quick --steps 300000
    python bench/sweep.py humanoid --axis critic-depth --values 4,16,64 --train-args="--depth 4"
    python bench/depth_sweep.py humanoid --depths 4,8,16,32,64 --seeds 3 --steps 50000000

Resumable: a run whose evaluations reached `--steps` is not run again; a run that stopped part
way continues from its latest checkpoint (`crl-train --resume`), so a sweep killed at any point
restarts where it was. `--train-args` passes further flags to every run (e.g. a smaller
`--num-envs` for a CPU). Writes `<out>/sweep.json` (every run's learning curve, final score
and parameter count, with the machine) and `<out>/sweep.png` (score against env steps per value;
final score against the axis, every seed drawn; for the network-size axes, final score against
parameters too). `bench/width_vs_depth.py` puts a depth and a width sweep on one parameter axis.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shlex
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

import tyro
from bench_cli import BenchConfigError, result_context, run_cli

from crl.core.atomic import write_atomic, write_json
from crl.runtime.bench import device_info, versions

ConfigT = TypeVar("ConfigT")

Axis = Literal["depth", "width", "batch", "residual", "actor-depth", "critic-depth"]
# The crl-train flag each axis sets; a value is put after it, except `residual` (a switch).
# `depth` sizes the actor and the critic together; `actor-depth` / `critic-depth` scale one of
# them while the other keeps the preset's (or --train-args') depth, as the paper's ablation does.
AXIS_FLAGS: dict[str, str] = {"depth": "--depth", "width": "--width", "batch": "--batch-size",
                              "actor-depth": "--actor-depth", "critic-depth": "--critic-depth"}
# The axes that change the networks' size: their plot adds final score against parameters.
SIZE_AXES = ("depth", "width", "actor-depth", "critic-depth")
# What each evaluation record holds (crl.train.evaluate), and how the plots scale it.
METRICS = {"time_at_goal": ("time at goal", 1.0, "steps"),
           "success_rate": ("success rate", 100.0, "%")}
ARGS_FILE = "sweep_args.json"  # in each run directory: the crl-train arguments it was run with
EVAL_SPLIT = "train"  # the env the run trains in; held-out evaluations sit beside it


class SweepError(RuntimeError):
    """A run of the sweep failed; the sweep can be rerun to continue."""


@dataclass(frozen=True)
class SweepRuns:
    """What every run of a sweep shares: the task, seeds, length, recipe and score. The depth
    study and the width-against-depth comparison take these flags as they are."""

    task: tyro.conf.Positional[str]
    seeds: int = 1
    """Seeds 0..seeds-1 per value."""
    steps: int = 1_000_000
    """Env steps per run (crl-train --total-steps)."""
    preset: Literal["paper", "quick"] = "paper"
    out: Path | None = None
    """Folder of run directories and results; None: one under runs/ named for task and sweep."""
    train_args: str = ""
    """Further crl-train flags for every run, as one string (e.g. "--num-envs 256")."""
    metric: Literal["time_at_goal", "success_rate"] = "time_at_goal"
    """The score: the paper reports time at goal."""
    final_evals: int = 1
    """Evaluations averaged into a run's final score (the last ones)."""

    def shared(self) -> dict[str, Any]:
        """These fields by name, to build a `SweepConfig` from a config that extends them."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(SweepRuns)}


@dataclass(frozen=True)
class SweepConfig(SweepRuns):
    """One axis, its values, and the seeds each value is trained with."""

    axis: Axis = "depth"
    values: str = "4,8,16,32,64"
    """Comma-separated values of the axis (`residual`: true,false)."""

    def axis_values(self) -> list[Any]:
        parts = [p.strip() for p in self.values.split(",") if p.strip()]
        if not parts:
            raise BenchConfigError(f"--values {self.values!r}: give at least one value")
        if self.axis == "residual":
            if any(p not in ("true", "false") for p in parts):
                raise BenchConfigError(f"--values {self.values!r}: residual takes true,false")
            return [p == "true" for p in parts]
        try:
            values = [int(p) for p in parts]
        except ValueError:
            raise BenchConfigError(
                f"--values {self.values!r}: {self.axis} takes integers") from None
        if any(v < 1 for v in values) or len(set(values)) != len(values):
            raise BenchConfigError(f"--values {self.values!r}: distinct integers ≥ 1")
        return values

    def check(self) -> None:
        self.axis_values()
        for name in ("seeds", "steps", "final_evals"):
            if getattr(self, name) < 1:
                raise BenchConfigError(f"--{name.replace('_', '-')}: must be at least 1, "
                                       f"got {getattr(self, name)}")
        passed = set(shlex.split(self.train_args))
        taken = {"--seed", "--total-steps", "--out", "--resume", "--preset",
                 AXIS_FLAGS.get(self.axis, "--residual"), "--no-residual"}
        if clash := sorted(passed & taken):
            raise BenchConfigError(f"--train-args: {', '.join(clash)} is set by the sweep itself")

    def folder(self) -> Path:
        return self.out or Path("runs") / f"sweep-{self.task}-{self.axis}"


def run_name(config: SweepConfig, value: Any, seed: int) -> str:
    label = ("res" if value else "nores") if config.axis == "residual" else f"{value}"
    return f"{config.task}-{config.axis}{'' if config.axis == 'residual' else '-'}{label}-s{seed}"


def train_command(config: SweepConfig, value: Any, seed: int, run_dir: Path,
                  resume: bool) -> list[str]:
    axis_flag = (["--residual" if value else "--no-residual"] if config.axis == "residual"
                 else [AXIS_FLAGS[config.axis], str(value)])
    return [str(Path(sys.executable).parent / "crl-train"), config.task, "--preset",
            config.preset, "--seed", str(seed), "--total-steps", str(config.steps), *axis_flag,
            *shlex.split(config.train_args), "--out", str(run_dir),
            *(["--resume"] if resume else [])]


def evaluations(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "eval.json"
    if not path.is_file():
        return []
    return list(json.loads(path.read_text()).get("evaluations", []))


def finished(run_dir: Path, steps: int) -> bool:
    """A run is done when its evaluations reached the step budget (the trainer evaluates at
    the end of a run)."""
    evals = evaluations(run_dir)
    return bool(evals) and evals[-1]["env_steps"] >= steps


def ensure_run(config: SweepConfig, value: Any, seed: int) -> tuple[Path, str]:
    """Train (or finish) one run; returns its directory and what was done."""
    run_dir = config.folder() / run_name(config, value, seed)
    args = train_command(config, value, seed, run_dir, resume=False)[1:]
    recorded = run_dir / ARGS_FILE
    if recorded.is_file() and json.loads(recorded.read_text()) != args:
        raise SweepError(f"{run_dir} was trained with other settings "
                         f"({' '.join(json.loads(recorded.read_text()))}); give another --out")
    if finished(run_dir, config.steps):
        return run_dir, "done before"
    # A run that died before its first checkpoint starts again in place (crl-train allows it).
    resume = (run_dir / "checkpoints").is_dir() and any((run_dir / "checkpoints").iterdir())
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(recorded, args)
    cmd = train_command(config, value, seed, run_dir, resume)
    print(f"sweep: {' '.join(cmd)}", file=sys.stderr, flush=True)
    r = subprocess.run(cmd, stdout=subprocess.DEVNULL)
    if r.returncode != 0:
        raise SweepError(f"{run_dir.name}: crl-train exited {r.returncode} (command above); "
                           "rerun the sweep to continue from its last checkpoint")
    return run_dir, "resumed" if resume else "trained"


def param_counts(run_dir: Path) -> dict[str, int]:
    """The run's actor and critic encoders' parameters, and their total: counted from the
    networks its config.json builds for its spec.json (what crl-train trained), not from a
    formula of depth and width."""
    # Imported here: a setting the sweep refuses is reported before jax loads.
    from crl.core.spec import PolicySpec
    from crl.train.config import TrainConfig
    from crl.train.networks import make_networks, param_counts

    config = TrainConfig.from_dict(json.loads((run_dir / "config.json").read_text()))
    spec = PolicySpec.from_dict(json.loads((run_dir / "spec.json").read_text()))
    nets = make_networks(config.network, spec.act_dim)
    return param_counts(nets, spec.obs_dim, spec.goal_dim)


def curve(evals: list[dict[str, Any]], metric: str) -> list[tuple[int, float]]:
    return [(e["env_steps"], float(e[EVAL_SPLIT][metric])) for e in evals]


def final_score(points: list[tuple[int, float]], last: int) -> float:
    tail = [v for _, v in points[-last:]]
    return sum(tail) / len(tail) if tail else math.nan


def summarize(config: SweepConfig, runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per value: the final score's mean, std and min/max over seeds, and the parameters of
    its networks (the same for every seed)."""
    out = []
    for value in config.axis_values():
        scores = [r["final_score"] for r in runs if r["value"] == value]
        mean = sum(scores) / len(scores)
        std = math.sqrt(sum((s - mean) ** 2 for s in scores) / len(scores))
        params = next(r["params"]["total"] for r in runs if r["value"] == value)
        out.append({"value": value, "seeds": len(scores), "mean": mean, "std": std,
                    "min": min(scores), "max": max(scores), "params": params})
    return out


def plot_against_params(ax: Any, result: dict[str, Any], color: Any, label: str,
                        name_offset: tuple[int, int] = (4, 4)) -> None:
    """One sweep's final score against its runs' parameter count (log scale): mean ± std per
    value, every seed a dot, each point named by its value (`name_offset` points away)."""
    _, scale, _ = METRICS[result["metric"]]
    summary = result["summary"]
    for row in summary:
        scores = [r["final_score"] * scale for r in result["runs"] if r["value"] == row["value"]]
        ax.scatter([row["params"]] * len(scores), scores, color=color, alpha=0.35, s=12)
        ax.annotate(f"{result['axis']} {row['value']}", (row["params"], row["mean"] * scale),
                    textcoords="offset points", xytext=name_offset, fontsize=7, color=color)
    ax.errorbar([row["params"] for row in summary], [row["mean"] * scale for row in summary],
                yerr=[row["std"] * scale for row in summary], fmt="-o", color=color, capsize=4,
                label=label)
    ax.set_xscale("log")
    ax.set_xlabel("parameters (actor + critic encoders)")


def plot(result: dict[str, Any], path: Path) -> None:
    """Time at goal and success against env steps per value (mean over seeds, min–max shaded),
    the final score against the axis (mean ± std, every seed a dot) and, for a network-size
    axis, against parameters."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    axis, summary = result["axis"], result["summary"]
    sized = axis in SIZE_AXES
    fig, axes = plt.subplots(1, 4 if sized else 3, figsize=(20 if sized else 15, 4),
                             constrained_layout=True)
    colors = plt.get_cmap("viridis")(np.linspace(0, 0.9, len(summary)))
    for ax, (metric, (title, scale, unit)) in zip(axes[:2], METRICS.items(), strict=True):
        for color, row in zip(colors, summary, strict=True):
            runs = [r for r in result["runs"] if r["value"] == row["value"]]
            steps = sorted({s for r in runs for s, _ in r["curves"][metric]})
            per_seed = [np.interp(steps, *zip(*r["curves"][metric], strict=True)) * scale
                        for r in runs]
            ax.plot(steps, np.mean(per_seed, axis=0), color=color, label=f"{axis} {row['value']}")
            ax.fill_between(steps, np.min(per_seed, axis=0), np.max(per_seed, axis=0),
                            color=color, alpha=0.2)
        ax.set_xlabel("env steps")
        ax.set_ylabel(f"{title} ({unit})")
        ax.set_title(f"{result['task']}: {title} (mean over seeds, min–max shaded)", fontsize=9)
    axes[0].legend(fontsize=8)
    title, scale, unit = METRICS[result["metric"]]
    ax = axes[2]
    for x, row in enumerate(summary):
        scores = [r["final_score"] * scale for r in result["runs"] if r["value"] == row["value"]]
        ax.scatter([x] * len(scores), scores, color="0.5", s=12, zorder=2)
        ax.errorbar(x, row["mean"] * scale, yerr=row["std"] * scale, fmt="o", color="C0",
                    capsize=4, zorder=3)
    ax.set_xticks(range(len(summary)), [str(row["value"]) for row in summary])
    ax.set_xlabel(axis)
    ax.set_ylabel(f"final {title} ({unit})")
    ax.set_title(f"final {title} at {result['steps']:,} steps (mean ± std, seeds as dots)",
                 fontsize=9)
    if sized:
        plot_against_params(axes[3], result, "C0", axis)
        axes[3].set_ylabel(f"final {title} ({unit})")
        axes[3].set_title(f"final {title} against parameters", fontsize=9)
    write_atomic(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    plt.close(fig)


def result_header(benchmark: str, config: Any, folder: Path) -> dict[str, Any]:
    """What a sweep tool's JSON opens with: the benchmark, date, machine, versions, the config
    it ran (paths as strings) and its folder."""
    return {
        **result_context(benchmark, device_info(), versions()),
        **{k: (str(v) if isinstance(v, Path) else v)
           for k, v in dataclasses.asdict(config).items()},
        "out": str(folder),
    }


def sweep_cli(run: Callable[[ConfigT], Any], config: type[ConfigT], name: str) -> None:
    """A sweep tool's command line: `run` on the parsed config, a bad setting as `run_cli` says,
    a run that failed (a SweepError: its message names the run and its log) as one line on stderr
    and exit status 1."""

    def main(parsed: ConfigT) -> None:
        try:
            run(parsed)
        except SweepError as e:
            print(f"{name}: {e}", file=sys.stderr)
            sys.exit(1)

    run_cli(main, config, name)


def run_sweep(config: SweepConfig) -> dict[str, Any]:
    config.check()
    folder = config.folder()
    folder.mkdir(parents=True, exist_ok=True)
    runs = []
    for value in config.axis_values():
        for seed in range(config.seeds):
            run_dir, how = ensure_run(config, value, seed)
            evals = evaluations(run_dir)
            curves = {m: curve(evals, m) for m in METRICS}
            runs.append({"value": value, "seed": seed, "run_dir": str(run_dir), "how": how,
                         "params": param_counts(run_dir), "curves": curves,
                         "final_score": final_score(curves[config.metric], config.final_evals),
                         "wall_s": evals[-1].get("wall_s")})
    result = {**result_header("sweep", config, folder), "runs": runs,
              "summary": summarize(config, runs)}
    write_json(folder / "sweep.json", result)
    plot(result, folder / "sweep.png")
    for row in result["summary"]:
        print(f"{config.axis} {row['value']}: final {config.metric} {row['mean']:.3g} "
              f"± {row['std']:.2g} over {row['seeds']} seed(s), {row['params']:,} parameters")
    print(f"wrote {folder / 'sweep.json'} and {folder / 'sweep.png'}")
    return result


if __name__ == "__main__":
    sweep_cli(run_sweep, SweepConfig, "sweep")
