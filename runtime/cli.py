"""`crl-run`: run exported policies on a robot computer.

    crl-run serve --policy policy.onnx --robot reacher          # the control loop (ZMQ)
    crl-run goal 0.1 0.05                                       # send it a goal
    crl-run closed-loop --policy policy.onnx --task reacher --dr held-out --goals 20 --out r.json
    crl-run bench --policy policy.onnx --out latency.json       # policy latency
    crl-run bench-loop --policy policy.onnx --hz 100 --seconds 60 --out loop.json
    crl-run keys --out keys/                                    # CURVE keys (--keys keys/)

Every flag is checked when the command line is parsed, before anything loads; a user mistake
is one line on stderr and exit status 2. `crl-run --version` prints the version.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

import tyro

from crl.core import plugins, usage
from crl.core.atomic import write_json
from crl.core.plugins import Command
from crl.core.spec import SpecError
from crl.core.usage import USAGE_ERROR, UsageError, run_command
from crl.runtime.policy import PolicyError

if TYPE_CHECKING:
    from crl.runtime.auth import Keys, Role

PORTS = 5  # the transport's streams: robot observations, telemetry, actions, goals, status


@dataclass(frozen=True)
class BenchArgs:
    """Measure per-call policy latency (p50/p90/p99/max) and throughput on this machine."""

    policy: Path
    """policy.onnx (backend ort), policy.engine (trt) or a run directory (jax)"""
    out: Path
    """the JSON result to write"""
    backend: Literal["ort", "trt", "jax"] = "ort"
    """what runs the policy: ONNX Runtime, a TensorRT engine, or jax on a training run"""
    batch: str = "1,8,64"
    """comma-separated batch sizes"""
    iterations: int = 1000
    """timed calls per batch size, after a warm-up of a tenth as many"""
    rate: float = 0.0
    """pace the calls at this rate in Hz, as the control loop does (e.g. the spec's control_hz);
    0: back to back"""
    threads: int = 1
    """ONNX Runtime intra-op threads (1 is fastest at batch 1 on small CPUs)"""
    spin: bool = False
    """ONNX Runtime worker threads busy-wait instead of sleeping (with --threads 2 or more; they
    go on spinning for tens of ms after each call, so at a control rate those cores never rest)"""
    providers: Annotated[tuple[str, ...], usage.default(
        "the best this onnxruntime has: TensorRT, then CUDA, then CPU")] = ()
    """ONNX Runtime execution providers, best first, e.g. CUDAExecutionProvider"""
    plot: Path | None = None
    """latency histogram to draw (.png, .svg or .pdf)"""

    def check(self) -> None:
        parse_batches(self.batch)
        usage.at_least("--iterations", self.iterations, 1)
        usage.non_negative("--rate", self.rate, "back to back")
        usage.at_least("--threads", self.threads, 1)
        usage.suffix("--plot", self.plot, usage.PLOT_SUFFIXES)
        usage.output("--out", self.out)
        usage.output("--plot", self.plot)


@dataclass(frozen=True)
class Connection:
    host: str = "127.0.0.1"
    """where the ZMQ streams live (another address makes them reachable from other machines, and
    needs --keys)"""
    port: int = 5560
    """base port: robot observations P, telemetry P+1; runtime actions P+2, goals P+3, status P+4"""
    keys: Path | None = None
    """CURVE keys folder (`crl-run keys`): this party's secret certificate and authorized/ peers'
    public ones; every stream is then encrypted and only authorized keys are served"""

    def check(self) -> None:
        usage.port("--port", self.port, PORTS)


@dataclass(frozen=True)
class KeysArgs:
    """Make CURVE certificates for `--keys DIR`: each role's secret in DIR (mode 0600) and its
    public certificate in DIR/authorized/, so the roles made together trust each other. On
    several machines, give each party its own secret and its peers' public certificates."""

    out: Path
    """the keys folder"""
    roles: tuple[Literal["runtime", "robot", "operator"], ...] = ("runtime", "robot", "operator")
    """whose certificates to make (operator: `crl-run goal`, status and telemetry readers)"""

    def check(self) -> None:
        if not self.roles:
            raise UsageError("--roles: name at least one of runtime, robot, operator")


@dataclass(frozen=True)
class ServeArgs(Connection):
    """Run a policy on a robot at its control rate: observations in, goals in, actions out, with
    the robot config's safety checks; a one-line live status."""

    policy: Path = tyro.MISSING
    """policy.onnx (backend ort) or policy.engine (trt)"""
    backend: Literal["ort", "trt"] = "ort"
    """what runs the policy: ONNX Runtime (a .onnx file) or TensorRT (a .engine)"""
    robot: Annotated[str, usage.default("the policy's task")] = ""
    """robot config: a shipped one by task name (reacher, ant, ...) or a YAML path"""
    rate: float = 0.0
    """control rate in Hz (0: the policy's, from its spec)"""
    speed: float = 1.0
    """run the clock this many times faster than real time (against a sim robot run as fast)"""
    seconds: float = 0.0
    """stop after this many seconds (0: run until Ctrl-C)"""
    wait: float = 30.0
    """seconds to wait for the robot's first observation"""
    spin: float = 0.0005
    """seconds before each deadline spent busy-waiting instead of sleeping (timer precision)"""
    realtime: bool = False
    """ask for SCHED_FIFO scheduling (needs CAP_SYS_NICE or an rtprio limit) and hold the CPUs'
    wake-up latency at 0 while serving (/dev/cpu_dma_latency: idle cores poll)"""
    threads: int = 1
    """ONNX Runtime intra-op threads"""
    max_observation_age: float | None = None
    """override the robot config: control periods before data counts as stale"""
    goal_margin: float | None = None
    """override the robot config: margin around the training goal box"""
    max_action_change: float | None = None
    """override the robot config: largest command change per tick, physical units"""
    soft_start: float | None = None
    """override the robot config: seconds over which actions ramp in"""
    max_joint_speed: float | None = None
    """override the robot config: measured joint speed (units/s) read as a reset, not motion"""
    safe_action: Literal["hold", "zero", "default_pose"] | None = None
    """override the robot config's safe action"""
    goal: tuple[float, ...] = ()
    """a goal to hold from the start (in the policy's goal frame)"""
    stats_out: Path | None = None
    """write the final statistics here (JSON), with the last missed ticks and their parts"""
    quiet: bool = False
    """no live status line"""

    def check(self) -> None:
        super().check()
        usage.non_negative("--rate", self.rate, "the policy's rate")
        usage.positive("--speed", self.speed)
        usage.non_negative("--seconds", self.seconds, "until Ctrl-C")
        usage.positive("--wait", self.wait)
        usage.non_negative("--spin", self.spin, "no busy-waiting")
        usage.at_least("--threads", self.threads, 1)
        usage.output("--stats-out", self.stats_out)
        for flag, value in (("--max-observation-age", self.max_observation_age),
                            ("--max-action-change", self.max_action_change),
                            ("--max-joint-speed", self.max_joint_speed)):
            if value is not None:
                usage.positive(flag, value)
        if self.goal_margin is not None:
            usage.non_negative("--goal-margin", self.goal_margin, "the training goal box")
        if self.soft_start is not None:
            usage.non_negative("--soft-start", self.soft_start, "no ramp")
        usage.finite("--goal", self.goal)


@dataclass(frozen=True)
class GoalArgs(Connection):
    """Send one goal to a running `crl-run serve`; prints whether it was accepted."""

    values: tyro.conf.Positional[tuple[float, ...]] = ()
    """the goal: X Y [Z] in the policy's goal frame"""
    frame: str = "world"
    """the frame the goal is given in, which must be the policy's goal frame"""
    timeout: float = 2.0
    """seconds to wait for `crl-run serve` to answer"""

    def check(self) -> None:
        super().check()
        if not self.values:
            raise UsageError("goal: give the goal's coordinates, e.g. `crl-run goal 0.1 0.05`")
        usage.finite("goal", self.values)
        usage.positive("--timeout", self.timeout)


def parse_batches(text: str) -> tuple[int, ...]:
    try:
        batches = tuple(int(b) for b in text.split(",") if b.strip())
    except ValueError:
        raise UsageError(f"--batch: {text!r} is not a comma-separated list of integers") from None
    if not batches or min(batches) < 1:
        raise UsageError(f"--batch: {text!r} needs positive batch sizes, e.g. 1,8,64")
    return batches


def bench(args: BenchArgs) -> None:
    from crl.runtime.bench import run_bench

    result = run_bench(args.policy, args.backend, parse_batches(args.batch), args.iterations,
                       args.out, args.plot, args.threads, args.providers or None, args.rate,
                       args.spin)
    for r in result["results"]:
        over = f", {r['calls_over_period']} calls over the period" if args.rate else ""
        print(f"batch {r['batch']:4d}: p50 {r['p50_ms']:.3f} ms  p99 {r['p99_ms']:.3f} ms  "
              f"max {r['max_ms']:.3f} ms  {r['throughput_per_s']:.0f}/s  "
              f"({r['p50_over_bandwidth_bound']:.2f}× the memory-bandwidth bound; "
              f"CPU {r['cpu_percent']:.0f}% of a core{over})")
    steal = result["cpu_steal_percent"]
    if steal:  # a virtual machine whose host ran other guests on its CPUs meanwhile
        print(f"the hypervisor gave other guests {steal:.1f}% of this machine's CPU time "
              "meanwhile (steal): a tail that grows with it is the host's")
    print(f"wrote {args.out}" + (f" and {args.plot}" if args.plot else ""))


def _policy(path: Path, backend: str, threads: int = 1) -> object:
    from crl.runtime.policy import load_policy

    return load_policy(path, backend, threads=threads)


def _keys(folder: Path | None, role: Role, server: Role) -> Keys | None:
    """`role`'s keys from `--keys`, with those of the `server` it connects to."""
    from crl.runtime.auth import load_keys

    return load_keys(folder, role, (server,)) if folder is not None else None


def serve_cmd(args: ServeArgs) -> None:
    from crl.runtime import robot_config
    from crl.runtime.controller import Controller
    from crl.runtime.serve import ServeOptions, serve
    from crl.runtime.transport import Endpoints

    endpoints, keys = Endpoints(args.host, args.port), _keys(args.keys, "runtime", "robot")
    endpoints.check_binding(keys)  # before the policy loads: a host error comes at once
    policy = _policy(args.policy, args.backend, args.threads)
    spec = policy.spec  # type: ignore[attr-defined]
    config = robot_config.load(args.robot or spec.task).replace_safety(
        max_observation_age=args.max_observation_age, goal_margin=args.goal_margin,
        max_action_change=args.max_action_change, soft_start=args.soft_start,
        safe_action=args.safe_action, max_joint_speed=args.max_joint_speed)
    controller = Controller(policy, config, rate_hz=args.rate or None,  # type: ignore[arg-type]
                            speed=args.speed)
    if args.goal:
        ok, reason = controller.set_goal(spec.goal.frame, list(args.goal))
        if not ok:
            raise PolicyError(f"--goal: {reason}")
    print(f"crl-run serve: {spec.task} policy ({args.backend}) at {controller.rate_hz:g} Hz; "
          f"robot observations from {endpoints.observations}, actions on {endpoints.actions}, "
          f"goals on {endpoints.goals}", file=sys.stderr, flush=True)
    live = sys.stderr.isatty() and not args.quiet
    final = serve(controller, ServeOptions(endpoints, wait_s=args.wait, spin_s=args.spin,
                                           realtime=args.realtime, seconds=args.seconds,
                                           keys=keys),
                  on_status=_status_line if live else None)
    if live:
        print(file=sys.stderr)
    print(summary_line(final))
    if args.stats_out:  # with the last missed ticks' parts: why each miss happened
        write_json(args.stats_out, {**final, "miss_log": controller.stats.misses_log()})


def summary_line(s: dict[str, float | int | str]) -> str:
    """The status in one line: the rate over the last second and the longest gap between
    actions since the previous status (and over the run), so a stall cannot hide."""
    return (f"{s['mode']:>10}  {s['rate_hz']:6.1f} Hz  longest gap {s['max_gap_ms']:.0f} ms "
            f"(run {s['max_gap_run_ms']:.0f} ms)  p99 period error "
            f"{s['period_error_p99_ms']:.3f} ms  policy p99 {s['policy_latency_p99_ms']:.3f} ms  "
            f"misses {s['misses']} (scheduling {s['misses_scheduling']})  samples skipped "
            f"{s['samples_skipped']} / repeated {s['samples_repeated']}  stale stops "
            f"{s['stale_stops']}  robot restarts {s['robot_restarts']}  joint jumps "
            f"{s['joint_jumps']}  goal rejections {s['goal_rejections']}  non-finite "
            f"{s['nonfinite_actions']}")


def _status_line(s: dict[str, float | int | str]) -> None:
    print("\r" + summary_line(s), end="", file=sys.stderr, flush=True)


def goal_cmd(args: GoalArgs) -> None:
    from crl.runtime.transport import Endpoints, send_goal

    reply = send_goal(Endpoints(args.host, args.port), list(args.values), args.frame, args.timeout,
                      _keys(args.keys, "operator", "runtime"))
    if not reply.accepted:
        raise PolicyError(f"goal rejected: {reply.reason}")
    print(f"goal {list(args.values)} accepted")


def keys_cmd(args: KeysArgs) -> None:
    from crl.runtime.auth import make_keys

    for path in make_keys(args.out, args.roles):
        print(f"wrote {path}")


# The runtime's own subcommands, then those a floor above gives it through entry points
# (`crl.core.plugins`): the testbed's closed-loop and bench-loop.
COMMANDS: dict[str, Command] = {
    "serve": Command(ServeArgs, serve_cmd), "goal": Command(GoalArgs, goal_cmd),
    "bench": Command(BenchArgs, bench), "keys": Command(KeysArgs, keys_cmd),
    **plugins.commands(plugins.RUN_COMMANDS),
}


DESCRIPTION = "Run exported policies on a robot computer. `crl-run --version` prints the version."


def main(argv: Sequence[str] | None = None) -> None:
    from crl.runtime.auth import AuthError
    from crl.runtime.observation import ObservationError
    from crl.runtime.robot_config import RobotConfigError
    from crl.runtime.serve import StartupError
    from crl.runtime.transport import TransportError

    args = tyro.extras.subcommand_cli_from_dict({n: c.args for n, c in COMMANDS.items()},
                                                prog="crl-run", description=DESCRIPTION, args=argv)
    command = next(c for c in COMMANDS.values() if isinstance(args, c.args))
    mistakes: tuple[type[BaseException], ...] = (
        UsageError, PolicyError, SpecError, RobotConfigError, ObservationError, StartupError,
        TransportError, AuthError, *command.errors, OSError)  # OSError: an unwritable --out
    try:
        usage.check_flags(args)  # every flag, before anything loads
        command.run(args)
    except mistakes as e:
        print(f"crl-run: error: {e}", file=sys.stderr)
        raise SystemExit(USAGE_ERROR) from None


def crl_run() -> int | None:
    """The `crl-run` console script."""
    return run_command("crl-run", main, None)


if __name__ == "__main__":
    main()
