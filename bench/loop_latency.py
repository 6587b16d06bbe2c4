"""The control loop's timing targets, measured with `crl-run bench-loop` against a loopback robot.

Targets (issue 11, on the 2-core CPU): 100 Hz for 60 s with a depth-64 width-256 ONNX Runtime
policy, and 500 Hz for 60 s with a depth-4 one: p99 period error ≤ 0.5 ms and zero missed
deadlines in both; end-to-end latency (observation stamp → action received by the robot) p50/p99
reported. The policies are the reacher's (its observation, forward kinematics and robot config)
with random weights: timing does not depend on weight values. Each run is a separate
`crl-run bench-loop` process, as a user would run it; the period-error histograms of both go in
one PNG.

The platform baseline: the same fixed-rate loop (same wait, spin and scheduling) with nothing to
do, at the fastest rate, for as long. Its misses are the machine's, not the controller's: a tick
that does no work can only be late because the process was not run (on a VM, host steal, which
is recorded from /proc/stat around every run).

    python bench/loop_latency.py                 # bench/results/loop_latency_<device>.json/.png
    python bench/loop_latency.py --seconds 5 --out /tmp/loop.json    # a quick look
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

from crl.core.atomic import write_json
from crl.core.spec import NetworkSpec
from crl.export.onnx_export import export_actor, random_params
from crl.runtime.bench import device_info
from crl.runtime.controller import Stats
from crl.runtime.loop import DEFAULT_SPIN_S, FixedRateLoop, hold_wake_latency, set_realtime
from crl.testbed.bench_loop import plot_period_error

RESULTS = Path(__file__).parent / "results"
RUNS = ((100.0, 64), (500.0, 4))  # (Hz, depth) pairs the targets name
WIDTH = 256


def reacher_spec() -> Any:
    from crl.sim import tasks

    with contextlib.redirect_stdout(sys.stderr):  # MJX's import notices
        return tasks.make("reacher", dr="off").spec


def steal_seconds() -> float | None:
    """The CPUs' cumulative steal time (s): time a hypervisor ran something else while this
    machine's CPUs had work; None where /proc/stat does not say."""
    try:
        cpu = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    except OSError:
        return None
    if cpu[0] != "cpu" or len(cpu) < 9:
        return None
    return int(cpu[8]) / os.sysconf("SC_CLK_TCK")


def stolen_during(before: float | None) -> float | None:
    after = steal_seconds()
    return None if before is None or after is None else round(after - before, 3)


def platform_baseline(hz: float, seconds: float, spin_s: float, realtime: bool) -> dict[str, Any]:
    """The fixed-rate loop with an empty tick: how late this machine wakes a loop that does
    nothing, and how many deadlines it misses that way."""
    said = f"{set_realtime()}; {hold_wake_latency()}" if realtime else "normal priority"
    stats, errors, woken = Stats(), [], []

    def on_tick(deadline: float, now: float) -> None:
        errors.append(now - deadline)
        woken.append(now)

    loop = FixedRateLoop(1.0 / hz, stats, spin_s=spin_s)
    before = steal_seconds()
    loop.run(on_tick, threading.Event(), max_ticks=round(hz * seconds))
    ms = sorted(e * 1e3 for e in errors)
    # The longest time between two ticks: what this machine alone makes of a loop's gaps.
    longest_gap_ms = max((b - a for a, b in itertools.pairwise(woken)), default=0.0) * 1e3
    return {
        "hz": hz, "seconds": seconds, "ticks": len(ms), "misses": stats.counts["misses"],
        "misses_scheduling": stats.counts["misses_scheduling"],
        "period_error_ms": {"p50": ms[len(ms) // 2], "p99": ms[int(0.99 * (len(ms) - 1))],
                            "max": ms[-1]},
        "late_over_one_period": sum(e > 1e3 / hz for e in ms),
        "longest_gap_ms": longest_gap_ms,
        "host_steal_s": stolen_during(before), "scheduling": said, "spin_s": spin_s,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--spin", type=float, default=None, help="crl-run bench-loop --spin")
    p.add_argument("--realtime", action="store_true",
                   help="SCHED_FIFO for the runtime and the loopback robot (as on a robot)")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    spec = reacher_spec()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for hz, depth in RUNS:
            s = spec.replace(network=NetworkSpec(depth, WIDTH, 64))
            policy = Path(tmp) / f"reacher_d{depth}.onnx"
            export_actor(random_params(s, critic=False), s, policy)
            out = Path(tmp) / f"loop_{hz:g}.json"
            cmd = [sys.executable, "-m", "crl.runtime.cli", "bench-loop", "--policy", str(policy),
                   "--hz", str(hz), "--seconds", str(args.seconds), "--out", str(out)]
            if args.spin is not None:
                cmd += ["--spin", str(args.spin)]
            if args.realtime:
                cmd += ["--realtime"]
            before = steal_seconds()
            subprocess.run(cmd, check=True)
            results.append(json.loads(out.read_text()) | {"host_steal_s": stolen_during(before)})
    device = device_info()
    name = "cpu" if not device.get("gpu") else "gpu"
    out = args.out or RESULTS / f"loop_latency_{name}.json"
    summary = {
        "benchmark": "loop_latency",
        "date": results[0]["date"],
        "device": device,
        "versions": results[0]["versions"],
        "targets_met": all(all(r["targets"].values()) for r in results),
        "runs": [{k: v for k, v in r.items() if k != "period_error_samples_ms"} for r in results],
        "platform_baseline": platform_baseline(
            max(hz for hz, _ in RUNS), args.seconds,
            DEFAULT_SPIN_S if args.spin is None else args.spin, args.realtime,
        ),
    }
    write_json(out, summary)
    plot_period_error(results, out.with_suffix(".png"))
    for r in results:
        pe, e2e = r["period_error_ms"], r["end_to_end_ms"]
        print(f"{r['hz']:g} Hz depth {r['policy']['depth']}: period error p99 {pe['p99']:.3f} ms "
              f"(max {pe['max']:.3f}), {r['misses']} misses in {r['ticks']} ticks; end-to-end "
              f"p50 {e2e['p50']:.3f} / p99 {e2e['p99']:.3f} ms; host steal {r['host_steal_s']} s")
    b = summary["platform_baseline"]
    print(f"platform baseline (empty ticks) at {b['hz']:g} Hz: {b['misses']} misses in "
          f"{b['ticks']} ticks, period error max {b['period_error_ms']['max']:.3f} ms; host "
          f"steal {b['host_steal_s']} s")
    print(f"wrote {out} and {out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
