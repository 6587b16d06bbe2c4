"""Learning-curve PNGs of a run, drawn from its `eval.json` (and `learners.json`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from crl.train.checkpoint import CheckpointError

CURVE_FILE = "learning_curve.png"
LEARNERS_FILE = "learners.json"  # a run with learners: every agent's evaluations side by side
LEARNERS_CURVE_FILE = "learners.png"
# The nominal target a run is read against: at least 90% success on fresh goals (the CPU
# quickstart's, which bench/quickstart.py imports from here; docs/benchmarks.md#quickstart).
SUCCESS_TARGET = 0.9


def plot_learning_curve(run_dir: Path, out: Path | None = None) -> Path:
    """Draw `learning_curve_figure` to `out` (default: the run's learning_curve.png; .png, .svg
    or .pdf)."""
    fig = learning_curve_figure(run_dir)
    out = Path(out) if out is not None else Path(run_dir) / CURVE_FILE
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    return out


def learning_curve_figure(run_dir: Path) -> Any:
    """Success against env steps, reached (solid) and at the goal when the episode ends
    (dashed), with the target (SUCCESS_TARGET) as a line; time at goal; median final distance
    with the success radius; and how much the actions alternate near the goal
    (`crl.core.oscillation`): each under the training env, and under the held-out ranges where
    the run evaluates them (monitoring only: they never pick a checkpoint)."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import EngFormatter

    run_dir = Path(run_dir)
    path = run_dir / "eval.json"
    if not path.is_file():
        raise CheckpointError(f"{run_dir}: no eval.json to plot")
    data = json.loads(path.read_text())
    evaluations = data.get("evaluations", [])
    steps = [e["env_steps"] for e in evaluations]
    dr = data.get("dr", "train")
    splits = {"train": f"training env (DR {dr})", "held_out": "held-out DR"}
    spec_path = run_dir / "spec.json"
    radius = json.loads(spec_path.read_text())["success_radius"] if spec_path.is_file() else None

    fig = Figure(figsize=(17, 3.6), layout="constrained")
    axes = fig.subplots(1, 4)
    panels = (
        ("success", (("success_rate", "-", "reached"), ("final_success_rate", "--", "at the end")),
         100.0, "%"),
        ("time at goal", (("time_at_goal", "-", ""),), 1.0, "steps"),
        ("median final distance", (("final_distance_median", "-", ""),), 100.0, "cm"),
        ("oscillation near the goal", (("oscillation", "-", ""),), 100.0,
         "% of action components reversing"),
    )
    for ax, (title, lines, scale, unit) in zip(axes, panels, strict=True):
        for i, (split, label) in enumerate(splits.items()):
            for key, style, what in lines:
                if evaluations and key in evaluations[0].get(split, {}):
                    ax.plot(steps, [e[split][key] * scale for e in evaluations], style,
                            marker="o", ms=3, color=f"C{i}",
                            label=f"{label}, {what}" if what else label)
        ax.set_title(title)
        ax.xaxis.set_major_formatter(EngFormatter())
        ax.set_xlabel("env steps")
        ax.set_ylabel(unit)
        ax.grid(alpha=0.3)
    axes[0].axhline(SUCCESS_TARGET * 100.0, color="k", ls=":", lw=1.3,
                    label=f"target: ≥ {SUCCESS_TARGET:.0%} success")
    axes[0].set_ylim(-2, 102)
    axes[0].legend(loc="lower right", fontsize=8)
    if radius is not None:
        axes[2].axhline(radius * 100.0, color="gray", ls="--", lw=1, label="success radius")
        axes[2].legend(loc="upper right", fontsize=8)
    fig.suptitle(f"{data.get('task', '')}: deterministic actor on fresh goals")
    return fig


def plot_learners(run_dir: Path, out: Path | None = None) -> Path:
    """Time at goal against env steps, one line per agent of a run with learners: the
    collector that acts and the learners of other depths trained on its batches."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import EngFormatter

    run_dir = Path(run_dir)
    path = run_dir / LEARNERS_FILE
    if not path.is_file():
        raise CheckpointError(f"{run_dir}: no {LEARNERS_FILE} to plot")
    data = json.loads(path.read_text())
    evaluations = data["evaluations"]
    steps = [e["env_steps"] for e in evaluations]
    fig, ax = plt.subplots(figsize=(6.5, 4), constrained_layout=True)
    for name, agent in data["agents"].items():
        shape = f"actor depth {agent['actor']['depth']}, critic depth {agent['critic']['depth']}"
        label = f"{name}: {shape}" + (" (acts)" if agent["acts"] else " (never acts)")
        # The collector thick and black under the learners: one of its own shape (a control)
        # draws exactly over it.
        style = {"color": "k", "lw": 3.0} if agent["acts"] else {"lw": 1.4}
        ax.plot(steps, [e[name]["train"]["time_at_goal"] for e in evaluations], marker="o",
                ms=3, label=label, **style)
    ax.set_title(f"{data.get('task', '')}: agents trained on one collector's data", fontsize=10)
    ax.xaxis.set_major_formatter(EngFormatter())
    ax.set_xlabel("env steps")
    ax.set_ylabel("time at goal (steps)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    out = Path(out) if out is not None else run_dir / LEARNERS_CURVE_FILE
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
