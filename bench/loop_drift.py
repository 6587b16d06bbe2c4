"""The loop against a robot whose clock drifts: does it stay on the robot's samples?

Two setups, each with the robot's clock at +PPM and at -PPM against this computer's:
- the reacher's closed loop at 25 Hz: `crl-run closed-loop` with the sim robot's clock running
  fast or slow (`--clock-ppm`), the demo policy, held-out dynamics, goals until `--seconds`;
- a 100 Hz robot and a depth-64 policy (random weights, the reacher's spec): `crl-run
  bench-loop`'s loopback robot with its clock fast or slow.

Per run it records the runtime's end-to-end latency (observation received → action published)
and policy latency, the robot-measured latency (measurement → action received, on the robot's
clock), misses, the samples skipped or repeated, and the runtime's stale stops and safe ticks,
and checks them against the targets: runtime p99 ≤ policy p99 + 0.5 ms, robot p99 ≤ policy p99
+ 1.5 ms, skipped + repeated no more than the drift requires (PPM · ticks), 0 misses, and no
stale stop (the robot never stops sending, so its data must never read stale).

With `--realtime` the runtime and the robot (sim or loopback) ask for SCHED_FIFO, as on a robot.

    python bench/loop_drift.py --policy build/demo/reacher.onnx --seconds 600 --realtime \
        --out bench/results/loop_drift_cpu.json
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench_cli import result_context
from loop_latency import reacher_spec

from crl.core.atomic import write_json
from crl.core.spec import NetworkSpec, PolicySpec
from crl.runtime.bench import device_info, versions
from crl.runtime.onnx_file import read_spec
from crl.testbed.bench_loop import run_bench_loop
from crl.testbed.closed_loop import run_closed_loop

RUNTIME_MARGIN_MS = 0.5  # runtime end-to-end p99 over policy p99
ROBOT_MARGIN_MS = 1.5  # robot-measured p99 over policy p99
EPISODE_S = 2.0  # a reacher episode: 50 steps at 25 Hz


def targets(ppm: float, ticks: int, misses: int, skipped: int, repeated: int,
            policy_p99: float, runtime_p99: float, robot_p99: float,
            stale_stops: int) -> dict[str, bool]:
    slips = math.ceil(abs(ppm) * 1e-6 * ticks)  # samples the drift alone would slip past
    return {
        # a robot that keeps sending is never judged stale, whatever its clock reads
        "no_stale_stops": stale_stops == 0,
        f"runtime_p99_le_policy_p99_plus_{RUNTIME_MARGIN_MS}ms":
            runtime_p99 <= policy_p99 + RUNTIME_MARGIN_MS,
        f"robot_p99_le_policy_p99_plus_{ROBOT_MARGIN_MS}ms":
            robot_p99 <= policy_p99 + ROBOT_MARGIN_MS,
        "skipped_and_repeated_le_drift": skipped + repeated <= slips,
        "zero_misses": misses == 0,
    }


def closed_loop_run(policy: Path, spec: PolicySpec, ppm: float, seconds: float,
                    realtime: bool) -> dict[str, Any]:
    goals = max(1, round(seconds / EPISODE_S))
    r = run_closed_loop(policy=policy, task=spec.task, dr="held-out", seed=0, goals=goals,
                        spec=spec, clock_ppm=ppm, realtime=realtime)
    rt = r["runtime"]
    row = {"setup": "closed loop, reacher 25 Hz", "clock_ppm": ppm, "realtime": realtime,
           "goals": goals,
           "success_rate": r["success_rate"], "wall_s": r["wall_s"], "ticks": rt["ticks"],
           "misses": rt["misses"], "samples_skipped": rt["samples_skipped"],
           "samples_repeated": rt["samples_repeated"],
           "policy_p99_ms": rt["policy_latency_p99_ms"],
           "runtime_end_to_end_ms": {"p50": rt["end_to_end_p50_ms"],
                                     "p99": rt["end_to_end_p99_ms"]},
           "robot_end_to_end_ms": r["robot_end_to_end_ms"],
           "robot_applied_ms": r["robot_applied_ms"],
           "stale_stops": rt["stale_stops"], "safe_ticks": rt["safe_ticks"]}
    row["targets"] = targets(ppm, rt["ticks"], rt["misses"], rt["samples_skipped"],
                             rt["samples_repeated"], rt["policy_latency_p99_ms"],
                             rt["end_to_end_p99_ms"], r["robot_end_to_end_ms"]["p99"],
                             rt["stale_stops"])
    return row


def loopback_run(policy: Path, ppm: float, seconds: float, hz: float,
                 realtime: bool) -> dict[str, Any]:
    r = run_bench_loop(policy, hz=hz, seconds=seconds, clock_ppm=ppm, realtime=realtime)
    rt = r["runtime_status"]
    row = {"setup": f"loopback robot {hz:g} Hz, depth {r['policy']['depth']}",
           "clock_ppm": ppm, "realtime": realtime, "seconds": seconds, "ticks": r["ticks"],
           "misses": r["misses"],
           "samples_skipped": r["samples_skipped"], "samples_repeated": r["samples_repeated"],
           "policy_p99_ms": r["policy_latency_ms"]["p99"],
           "runtime_end_to_end_ms": {"p50": rt["end_to_end_p50_ms"],
                                     "p99": rt["end_to_end_p99_ms"]},
           "robot_end_to_end_ms": r["end_to_end_ms"], "host": r["host"],
           "stale_stops": rt["stale_stops"], "safe_ticks": r["safe_ticks"]}
    row["targets"] = targets(ppm, r["ticks"], r["misses"], r["samples_skipped"],
                             r["samples_repeated"], r["policy_latency_ms"]["p99"],
                             rt["end_to_end_p99_ms"], r["end_to_end_ms"]["p99"],
                             rt["stale_stops"])
    return row


def summary(row: dict[str, Any]) -> str:
    """One run's figures and the targets it missed, for the log."""
    missed = [k for k, ok in row["targets"].items() if not ok]
    return (f"{row['setup']}, {row['clock_ppm']:+g} ppm: {row['ticks']} ticks, misses "
            f"{row['misses']}, skipped {row['samples_skipped']}, repeated "
            f"{row['samples_repeated']}, stale stops {row['stale_stops']}; p99 ms: policy "
            f"{row['policy_p99_ms']:.2f}, runtime {row['runtime_end_to_end_ms']['p99']:.2f}, "
            f"robot {row['robot_end_to_end_ms']['p99']:.2f}; "
            + (f"missed: {', '.join(missed)}" if missed else "targets met"))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--policy", type=Path, required=True, help="the reacher policy (ONNX)")
    p.add_argument("--ppm", type=float, default=100.0, help="the robot clock's error, ±")
    p.add_argument("--seconds", type=float, default=600.0, help="each closed-loop run")
    p.add_argument("--loopback-seconds", type=float, default=None,
                   help="each 100 Hz run (default: --seconds)")
    p.add_argument("--hz", type=float, default=100.0, help="the loopback runs' rate")
    p.add_argument("--depth", type=int, default=64, help="the loopback runs' policy depth")
    p.add_argument("--realtime", action="store_true",
                   help="the runtime and the robots ask for SCHED_FIFO, as on a robot")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    if not (args.seconds > 0 and args.ppm >= 0 and args.hz > 0 and args.depth >= 4):
        p.error("--seconds and --hz must be positive, --ppm at least 0, --depth at least 4")
    loop_s = args.loopback_seconds or args.seconds
    policy_spec = read_spec(args.policy)
    runs: list[dict[str, Any]] = []

    def save(done: bool) -> None:
        """The runs so far (a 10-minute set takes an hour: a stopped one keeps what it did)."""
        write_json(args.out, {
            **result_context("loop_drift", device_info(), versions()),
            "policy": str(args.policy), "ppm": args.ppm, "realtime": args.realtime,
            "complete": done, "runs": runs,
            "targets_met": done and all(all(r["targets"].values()) for r in runs),
        })

    with tempfile.TemporaryDirectory(prefix="crl-loop-drift-") as tmp:
        from crl.export.onnx_export import export_actor, random_params

        spec = reacher_spec().replace(network=NetworkSpec(args.depth, 256, 64),
                                      control_hz=args.hz)
        deep = Path(tmp) / f"reacher_d{args.depth}.onnx"
        export_actor(random_params(spec, critic=False), spec, deep)
        for ppm in (args.ppm, -args.ppm):
            runs.append(closed_loop_run(args.policy, policy_spec, ppm, args.seconds,
                                        args.realtime))
            save(done=False)
            print(summary(runs[-1]), flush=True)
            runs.append(loopback_run(deep, ppm, loop_s, args.hz, args.realtime))
            save(done=False)
            print(summary(runs[-1]), flush=True)
    save(done=True)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
