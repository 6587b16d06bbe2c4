"""`crl-sim`: look at a task's policy spec and watch rollouts of it.

    crl-sim info reacher [--json]
    crl-sim rollout reacher --episodes 2 --video out.mp4 --frames out.png [--physics jax|warp]
    crl-sim robot reacher --dr held-out --seed 0 [--speed 1] [--host 127.0.0.1 --port 5560]
                  [--keys DIR]

`robot` (the MuJoCo sim robot) is the testbed's, given to this command through the
`crl.commands.sim` entry points (`crl.core.plugins`). Every flag is checked when the command
line is parsed, before any work; errors a user can cause (an unknown task, a bad path or size)
print one line and exit 2. `crl-sim --version` prints the version.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import tyro

from crl.core import plugins, usage
from crl.core.plugins import Command
from crl.core.spec import PolicySpec
from crl.core.usage import CM_PER_M, USAGE_ERROR, run_command

POLICIES = ("random",)  # later versions add run directories and ONNX files
MIN_FRAME = 16  # pixels: the smallest frame the renderer draws


class PolicyChoiceError(ValueError):
    """`--policy` names something this version cannot load."""


Task = Annotated[
    str,
    tyro.conf.Positional,
    tyro.conf.arg(metavar="TASK", help="Task name, e.g. reacher (an unknown name lists them all)."),
]


@dataclass(frozen=True)
class Info:
    """Print a task's policy spec: what the policy observes, the goal it reaches, its actions."""

    task: Task
    json: bool = False
    """Print the raw spec JSON instead of tables."""


@dataclass(frozen=True)
class Rollout:
    """Roll out episodes, render them, and print per-episode goal-reaching metrics."""

    task: Task
    policy: str = "random"
    """What acts: `random` (uniform actions in [-1, 1])."""
    episodes: int = 2
    """Episodes to roll out (each of the task's full episode length)."""
    seed: int = 0
    """Seeds starts, goals, DR draws and random actions."""
    dr: Literal["off", "train", "held-out"] = "train"
    """Domain randomization: none, the training ranges, or the held-out ranges (outside them)."""
    physics: Literal["jax", "warp"] = "jax"
    """MJX implementation stepping the env: `jax`, or `warp` (MuJoCo Warp: an NVIDIA GPU and
    `pip install "mujoco-mjx[warp]"`)."""
    video: Path | None = None
    """Write an mp4 of all episodes here."""
    frames: Path | None = None
    """Write a PNG contact sheet here (one row of frames per episode)."""
    width: int = 320
    """Frame width in pixels (at most the model's offscreen buffer)."""
    height: int = 240
    """Frame height in pixels."""
    camera: Annotated[str | None, usage.default("the model's first camera")] = None
    """A camera of the robot model by name."""
    json: bool = False
    """Print the metrics as JSON instead of a table."""

    def check(self) -> None:
        if self.policy not in POLICIES:
            raise PolicyChoiceError(
                f"policy: {self.policy!r} is not supported yet; accepted: {', '.join(POLICIES)}"
            )
        usage.at_least("--episodes", self.episodes, 1)
        usage.seed("--seed", self.seed)
        usage.at_least("--width", self.width, MIN_FRAME)
        usage.at_least("--height", self.height, MIN_FRAME)
        usage.suffix("--video", self.video, usage.VIDEO_SUFFIXES)
        usage.suffix("--frames", self.frames, usage.IMAGE_SUFFIXES)


def print_spec(spec: PolicySpec) -> None:
    """The spec as a few rich tables: enough to wire a robot to the policy. Every text is
    escaped: square brackets in a spec (a name, a meaning, a range) are not rich markup."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console()
    console.print(f"[bold]{escape(spec.task)}[/bold]  format {escape(spec.format)}  control "
                  f"{spec.control_hz:g} Hz  success radius "
                  f"{spec.success_radius * CM_PER_M:g} cm")
    obs = Table("observation", "slice", "frame", "meaning", "names", title="observation "
                f"({spec.obs_dim})", title_justify="left")
    for f in spec.observation:
        s = spec.observation_slices()[f.name]
        obs.add_row(*map(escape, (f.name, f"{s.start}:{s.stop}", f.frame, f.meaning,
                                  " ".join(f.names))))
    console.print(obs)
    g = spec.goal
    goal = Table("goal", "size", "meaning", "low", "high",
                 title=escape(f"goal ({spec.goal_dim}, frame {g.frame})"), title_justify="left")
    for f in g.fields:
        s = spec.goal_slices()[f.name]
        goal.add_row(escape(f.name), str(f.size), escape(f.meaning), _fmt(g.low[s]),
                     _fmt(g.high[s]))
    console.print(goal)
    a = spec.action
    act = Table("joint", "scale", "offset", "low", "high",
                title=escape(f"action ({a.size}, {a.kind})"), title_justify="left",
                caption_justify="left",
                caption=escape("physical = offset + scale * a, clipped to [low, high]"
                               + (f"; each command = last + {a.lowpass:g} * (physical - last)"
                                  if a.lowpass < 1.0 else "")
                               + (f"; after a new goal, commands ramp in over {a.goal_ramp} "
                                  "steps from the one held" if a.goal_ramp else "")))
    for row in zip(a.joints, a.scale, a.offset, a.low, a.high, strict=True):
        act.add_row(escape(row[0]), *(f"{v:g}" for v in row[1:]))
    console.print(act)
    p = spec.provenance
    console.print(escape(f"env {p.env}  robot model sha256 {p.robot_model_sha256[:16]}…"))
    if p.domain_randomization:
        console.print(escape("domain randomization: " + json.dumps(p.domain_randomization)))
    if spec.network is not None:
        n = spec.network
        console.print(f"network depth {n.depth} width {n.width} repr_dim {n.repr_dim}")
        if n.critic_shape != (n.depth, n.width):
            console.print(f"critic depth {n.critic_shape[0]} width {n.critic_shape[1]}")


def _fmt(values: Sequence[float]) -> str:
    return " ".join(f"{v:g}" for v in values)


def print_metrics(result: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    table = Table("episode", "success", "time at goal (steps)", "final distance (cm)",
                  title=escape(f"{result['task']}: {len(result['episodes'])} episodes"),
                  title_justify="left")
    for i, m in enumerate(result["episodes"]):
        table.add_row(str(i), "yes" if m["success"] else "no", str(m["time_at_goal"]),
                      f"{m['final_distance'] * CM_PER_M:.2f}")
    s = result["summary"]
    table.add_section()
    table.add_row("mean", f"{s['success_rate']:.0%}",
                  f"{s['time_at_goal']:.1f} ({s['time_at_goal_fraction']:.0%})",
                  f"{s['final_distance_mean'] * CM_PER_M:.2f}")
    Console().print(table)


def make_env(task: str, dr: str = "train", physics: str = "jax") -> Any:
    """`crl.sim.tasks.make`, with stdout kept for results: MJX prints import notices there
    ("Failed to import warp"), which would corrupt `--json` output."""
    from crl.sim import tasks

    with contextlib.redirect_stdout(sys.stderr):
        return tasks.make(task, dr=dr, physics=physics)


def info(cmd: Info) -> None:
    spec = make_env(cmd.task).spec
    if cmd.json:
        print(spec.to_json())
    else:
        print_spec(spec)


def rollout(cmd: Rollout) -> None:
    from crl.sim import render  # before mujoco is imported: it picks the GL backend

    env = make_env(cmd.task, dr=cmd.dr, physics=cmd.physics)
    result = render.render_rollout(env, None, cmd.episodes, cmd.seed, video=cmd.video,
                                   frames=cmd.frames, width=cmd.width, height=cmd.height,
                                   camera=cmd.camera)
    if cmd.json:
        print(json.dumps(result, indent=2))
        return
    print_metrics(result)
    for path in (cmd.video, cmd.frames):
        if path is not None:
            print(f"wrote {path}")


COMMANDS = {"info": Command(Info, info), "rollout": Command(Rollout, rollout)}
DESCRIPTION = ("Look at a task's policy spec and watch rollouts of it. `crl-sim --version` prints "
               "the version.")


def main(argv: Sequence[str] | None = None) -> int:
    commands = {**COMMANDS, **plugins.commands(plugins.SIM_COMMANDS)}  # robot: the testbed's
    cmd = tyro.extras.subcommand_cli_from_dict({n: c.args for n, c in commands.items()},
                                               prog="crl-sim", description=DESCRIPTION,
                                               args=argv)
    try:
        usage.check_flags(cmd)  # every flag, before any work
        from crl.sim.setup import setup_jax

        setup_jax()  # XLA flags and the MJX patch, before jax compiles
        next(c for c in commands.values() if isinstance(cmd, c.args)).run(cmd)
    except ValueError as e:
        # Our errors are ValueError subclasses with a one-line message; anything else is a bug
        # and keeps its traceback.
        if not type(e).__module__.startswith("crl."):
            raise
        print(f"crl-sim: error: {e}", file=sys.stderr)
        return USAGE_ERROR
    return 0


def crl_sim() -> int | None:
    """The `crl-sim` console script; which subcommands need jax is the simulator's business: a
    missing module says it."""
    return run_command("crl-sim", main, None)


if __name__ == "__main__":
    sys.exit(main())
