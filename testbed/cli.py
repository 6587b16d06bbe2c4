"""The testbed's commands, given to the lower floors' command lines through entry points
(`crl.core.plugins`; pyproject names them): `crl-sim robot` (the MuJoCo sim robot),
`crl-run closed-loop` (a policy scored against it), `crl-run bench-loop` (the control loop's
timing against a loopback robot) and `crl-train robustness` (a policy's robustness envelope,
through the runtime's backends). Their names and flags are those commands'; only the code lives
here, above the runtime. Each checks its flags (`check`) when the command line is parsed.
"""

from __future__ import annotations

import contextlib
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import tyro

from crl.core import usage
from crl.core.atomic import write_json
from crl.core.plugins import Command
from crl.core.usage import UsageError
from crl.runtime.policy import PolicyError, load_policy
from crl.sim.cli import Task
from crl.testbed.clock import MAX_CLOCK_PPM
from crl.testbed.closed_loop import ClosedLoopError, run_closed_loop
from crl.testbed.robustness import UNITS, Grid, RobustnessError


@dataclass(frozen=True)
class Robot:
    """Play the real robot: plain MuJoCo in real time on the runtime's ZMQ transport.

    Publishes observations (every hinge/slide joint, base pose/twist, with the DR draw's noise)
    and telemetry (the episode's goal, the true achieved goal) at the task's control rate, and
    applies the newest action received after the draw's delay. One new DR draw, start and goal
    per episode, from the MJX env's own reset. Prints one line to stderr when it is publishing;
    SIGINT/SIGTERM stop it (exit 0).
    """

    task: Task
    dr: Literal["off", "train", "held-out"]
    """Domain randomization: none, the training ranges or the held-out ones (MJX's draws)."""
    seed: int = 0
    """Seeds every episode's start, goal, DR draw and observation noise."""
    speed: float = 1.0
    """Run this many times faster than real time (tests)."""
    host: str = "127.0.0.1"
    """Host to bind the observation and telemetry ports on and to read actions from."""
    port: int = 5560
    """Base port: observations P, telemetry P+1, actions read from P+2."""
    keys: Path | None = None
    """CURVE keys folder (`crl-run keys`; the robot's secret, authorized peers' public keys):
    required for a host beyond loopback."""
    episodes: int = 0
    """Stop after this many episodes (0: run until SIGINT/SIGTERM)."""
    clock_ppm: float = 0.0
    """Its clock runs this many parts per million fast (negative: slow) against this
    computer's, as a separate computer's does: paces the physics and stamps the messages."""
    realtime: bool = False
    """Ask for SCHED_FIFO for the physics loop and its transport's I/O threads, and hold the
    CPUs' wake-up latency at 0, as a robot's driver runs (needs CAP_SYS_NICE or an rtprio
    limit, and /dev/cpu_dma_latency; refused, it says so and runs)."""

    def check(self) -> None:
        from crl.runtime.cli import PORTS  # here: crl-run's command table loads this module

        usage.seed("--seed", self.seed)
        usage.positive("--speed", self.speed)
        usage.port("--port", self.port, PORTS)
        usage.at_least("--episodes", self.episodes, 0)
        usage.within("--clock-ppm", self.clock_ppm, -MAX_CLOCK_PPM, MAX_CLOCK_PPM)


def sim_robot(cmd: Robot) -> None:
    """Serve until a signal or `--episodes`; a signal during startup stops it before serving."""
    stopping: list[int] = []

    def on_signal(signum: int, frame: object) -> None:
        stopping.append(signum)

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        from crl.runtime.auth import AuthError, load_keys
        from crl.runtime.transport import Endpoints, TransportError
        from crl.testbed.robot import RobotError, SimRobot, serve

        try:
            endpoints = Endpoints(cmd.host, cmd.port)
            keys = load_keys(cmd.keys, "robot", ("runtime",)) if cmd.keys is not None else None
            endpoints.check_binding(keys)  # before the env compiles: a host error comes at once
        except (TransportError, AuthError) as e:
            raise RobotError(str(e)) from None
        with contextlib.redirect_stdout(sys.stderr):
            sim = SimRobot(cmd.task, dr=cmd.dr, seed=cmd.seed)
            sim.reset(0)  # compiles the env's reset before the clock starts
        if stopping:
            return
        try:
            stats = serve(sim, endpoints, speed=cmd.speed, episodes=cmd.episodes,
                          stop=lambda: bool(stopping), keys=keys, clock_ppm=cmd.clock_ppm,
                          realtime=cmd.realtime,
                          announce=lambda line: print(line, file=sys.stderr, flush=True))
        except TransportError as e:
            raise RobotError(str(e)) from None
        print(f"crl-sim robot: stopped: {stats.summary()}", file=sys.stderr, flush=True)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


@dataclass(frozen=True)
class ClosedLoopArgs:
    """Run a policy on the MuJoCo sim robot (robot and runtime as separate processes) and score
    N goals; writes per-goal results and the loop's statistics."""

    policy: Path
    """policy.onnx (backend ort) or policy.engine (trt)"""
    task: str
    """the task the sim robot plays, which must be the policy's (reacher, ant, ...)"""
    out: Path
    """the JSON results to write: every goal's, and the loop's statistics"""
    dr: Literal["off", "train", "held-out"] = "held-out"
    """the sim robot's domain randomization: none, the training ranges, or the held-out ones"""
    seed: int = 0
    """seeds the goals, the sim robot's starts and its DR draws"""
    goals: int = 20
    """goals to score, one episode each"""
    backend: Literal["ort", "trt"] = "ort"
    """what runs the policy: ONNX Runtime (a .onnx file) or TensorRT (a .engine)"""
    robot: Annotated[str, usage.default("the shipped one of the task")] = ""
    """robot config: a shipped one by task name or a YAML path"""
    speed: float = 1.0
    """faster than real time, for both processes"""
    keys: Path | None = None
    """a CURVE keys folder holding all three roles (`crl-run keys --out DIR`): the robot, the
    runtime and the scorer (operator) authenticate each other"""
    clock_ppm: float = 0.0
    """the sim robot's clock runs this many parts per million fast (negative: slow) against the
    runtime's, as a separate computer's does"""
    realtime: bool = False
    """the sim robot and the runtime ask for SCHED_FIFO and a CPU wake-up latency of 0, as on a
    robot (needs CAP_SYS_NICE or an rtprio limit; refused, each says so and runs)"""

    def check(self) -> None:
        usage.seed("--seed", self.seed)
        usage.at_least("--goals", self.goals, 1)
        usage.positive("--speed", self.speed)
        usage.within("--clock-ppm", self.clock_ppm, -MAX_CLOCK_PPM, MAX_CLOCK_PPM)
        usage.output("--out", self.out)


@dataclass(frozen=True)
class BenchLoopArgs:
    """Time the control loop at a rate against a loopback robot: period error, misses, latency."""

    policy: Path
    """policy.onnx (backend ort) or policy.engine (trt)"""
    out: Path
    """the JSON results to write"""
    hz: float = 100.0
    """the control rate to hold, in Hz"""
    seconds: float = 60.0
    """how long to run the loop, in seconds"""
    backend: Literal["ort", "trt"] = "ort"
    """what runs the policy: ONNX Runtime (a .onnx file) or TensorRT (a .engine)"""
    robot: Annotated[str, usage.default("the shipped one of the policy's task")] = ""
    """robot config: a shipped one by task name or a YAML path"""
    spin: float = 0.0005
    """seconds before each deadline spent busy-waiting instead of sleeping (timer precision)"""
    realtime: bool = False
    """ask for SCHED_FIFO scheduling (needs CAP_SYS_NICE or an rtprio limit) and a CPU wake-up
    latency of 0"""
    plot: Path | None = None
    """period-error histogram to draw (.png, .svg or .pdf), over the platform baseline: the
    same loop with empty ticks, run after it for --seconds (10 at most)"""

    def check(self) -> None:
        usage.positive("--hz", self.hz)
        usage.positive("--seconds", self.seconds)
        usage.non_negative("--spin", self.spin, "no busy-waiting")
        usage.suffix("--plot", self.plot, usage.PLOT_SUFFIXES)
        usage.output("--out", self.out)
        usage.output("--plot", self.plot)


def closed_loop_cmd(args: ClosedLoopArgs) -> None:
    spec = load_policy(args.policy, args.backend).spec
    if spec.task != args.task:
        raise PolicyError(f"--task {args.task!r}: the policy was trained for {spec.task!r}")
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    console = Console(stderr=True)
    with Progress(TextColumn("closed loop"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("goals"), TimeElapsedColumn(), console=console) as progress:
        bar = progress.add_task("goals", total=args.goals)

        def on_goal(goal: dict[str, Any]) -> None:
            progress.advance(bar)
            where = "at the goal" if goal["success"] else "not at the goal"
            progress.console.print(f"goal {progress.tasks[0].completed:.0f}/{args.goals}: "
                                   f"{goal['final_distance'] * usage.CM_PER_M:.2f} cm, {where}",
                                   highlight=False)

        result = run_closed_loop(policy=args.policy, task=args.task, dr=args.dr,
                                 seed=args.seed, goals=args.goals, backend=args.backend,
                                 robot=args.robot or None, speed=args.speed, spec=spec,
                                 keys=args.keys, clock_ppm=args.clock_ppm,
                                 realtime=args.realtime, on_goal=on_goal)
    write_json(args.out, result)
    rt, e2e = result["runtime"], result["robot_end_to_end_ms"]
    print(f"closed loop ({args.task}, dr {args.dr}, seed {args.seed}): success "
          f"{result['success_rate']:.0%} of {len(result['goals'])} goals, median final distance "
          f"{result['final_distance_median'] * usage.CM_PER_M:.2f} cm; "
          f"loop {rt.get('rate_hz', 0):.1f} Hz, "
          f"policy p99 {rt.get('policy_latency_p99_ms', float('nan')):.3f} ms, end-to-end p50 "
          f"{e2e['p50']:.2f} ms / p99 {e2e['p99']:.2f} ms, misses {rt.get('misses')}, samples "
          f"skipped {rt.get('samples_skipped')} / repeated {rt.get('samples_repeated')}, "
          f"oscillation {result['oscillation']:.1%}, stale stops "
          f"{rt.get('stale_stops')}; wrote {args.out}")


def bench_loop_cmd(args: BenchLoopArgs) -> None:
    from crl.testbed.bench_loop import (
        BASELINE_S,
        LoopProgress,
        check_plot,
        plot_period_error,
        run_bench_loop,
    )

    check_plot(args.plot)
    result = run_bench_loop(args.policy, hz=args.hz, seconds=args.seconds, backend=args.backend,
                            robot=args.robot or None, spin_s=args.spin, realtime=args.realtime,
                            baseline_s=min(args.seconds, BASELINE_S) if args.plot else 0.0,
                            progress=LoopProgress(args.hz, args.seconds))
    write_json(args.out, result)
    if args.plot:
        plot_period_error([result], args.plot)
    pe, e2e = result["period_error_ms"], result["end_to_end_ms"]
    print(f"{args.hz:g} Hz for {args.seconds:g} s: period error p50 {pe['p50']:.3f} ms / p99 "
          f"{pe['p99']:.3f} ms / max {pe['max']:.3f} ms, {result['misses']} missed deadlines; "
          f"end-to-end p50 {e2e['p50']:.3f} ms / p99 {e2e['p99']:.3f} ms; wrote {args.out}"
          + (f" and {args.plot}" if args.plot else ""))


@dataclass(frozen=True)
class RobustnessArgs:
    """Draw a policy's robustness envelope: at-the-end success, final distance and oscillation
    as friction, mass, damping, actuator gain, observation noise and action delay move, one at
    a time, from well below to well above the training ranges. Writes robustness.json and
    robustness.png (training ranges shaded green, held-out orange).

    Give a training run (`--run DIR`, its best checkpoint through the JAX backend) or an
    exported file (`--policy F`, through ONNX Runtime, as a robot runs it).
    """

    run: Path | None = None
    """Training run directory (`crl-train TASK --out DIR`)."""
    step: Annotated[
        int | None, usage.default("the best, as `crl-export onnx --best` takes it")] = None
    """With --run: the checkpoint (env steps)."""
    policy: Path | None = None
    """An exported ONNX policy file."""
    task: Annotated[str | None, usage.default("the policy's own")] = None
    """The task to run on."""
    out: Path = Path("robustness")
    """Folder for robustness.json and robustness.png."""
    compare: tuple[Path, ...] = ()
    """Other envelopes' robustness.json, drawn beside this one in the PNG."""
    grid: Annotated[Grid, tyro.conf.OmitArgPrefixes] = field(default_factory=Grid)

    def check(self) -> None:
        if (self.run is None) == (self.policy is None):
            raise UsageError("give --run DIR or --policy FILE (one of them)")
        if self.step is not None:
            if self.run is None:
                raise UsageError("--step picks a checkpoint of --run; a --policy file has one")
            usage.at_least("--step", self.step, 0)
        usage.seed("--seed", self.grid.seed)
        self.grid.check()


def robustness_cmd(args: RobustnessArgs) -> None:
    import json

    from crl.testbed.robustness import plot_envelope, run_envelope

    others = []
    for path in args.compare:  # read before the long part: a bad path fails at once
        try:
            others.append(json.loads(path.read_text()))
            others[-1]["points"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise RobustnessError(f"--compare {path}: not a robustness.json ({e})") from None
    if args.run is not None:
        from crl.train.checkpoint import best_step

        step = args.step if args.step is not None else best_step(args.run)
        policy = load_policy(args.run, "jax", step=step)
        label = f"{args.run} @ {step}"
    else:
        assert args.policy is not None
        policy = load_policy(args.policy, "ort")
        label = str(args.policy)
    envelope = run_envelope(policy, args.task or policy.spec.task, args.grid, label)
    result = envelope.to_dict()
    json_path = args.out / "robustness.json"
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(json_path, result)
    png = plot_envelope([result, *others], args.out / "robustness.png")
    for quantity, span in result["holds"].items():
        unit = UNITS.get(quantity, "x nominal")
        where = "fails at nominal" if span is None else f"holds {span[0]:g} .. {span[1]:g} {unit}"
        print(f"{quantity:>14}: {where}")
    print(f"wrote {json_path} and {png}")


SIM_ROBOT = Command(Robot, sim_robot)
CLOSED_LOOP = Command(ClosedLoopArgs, closed_loop_cmd, (ClosedLoopError,))
BENCH_LOOP = Command(BenchLoopArgs, bench_loop_cmd)
ROBUSTNESS = Command(RobustnessArgs, robustness_cmd, (RobustnessError, PolicyError))
