"""`crl-run bench-loop`: the control loop timed against a loopback robot in another process.

The runtime runs here exactly as `crl-run serve` runs it (controller, ZMQ transport, fixed-rate
loop), at `--hz` for `--seconds`, with a goal at the centre of the policy's goal box; the
loopback robot (`crl.testbed.loopback_robot`) publishes observations at the same rate and
timestamps each action's arrival. Reported: period error (wake-up − deadline) percentiles and
histogram, missed deadlines, policy latency, and end-to-end latency (observation stamp → action
received by the robot, on the robot's clock).
"""

from __future__ import annotations

import datetime
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

import numpy as np

from crl.core.latency import percentile, summarize
from crl.runtime import robot_config
from crl.runtime.bench import device_info, versions
from crl.runtime.controller import Controller
from crl.runtime.loop import DEFAULT_SPIN_S
from crl.runtime.policy import PolicyError, load_policy
from crl.runtime.serve import ServeOptions, serve
from crl.runtime.transport import Endpoints
from crl.testbed.closed_loop import free_base_port

PERIOD_ERROR_TARGET_MS = 0.5


def run_bench_loop(policy_path: Path, *, hz: float, seconds: float, backend: str = "ort",
                   robot: str | None = None, spin_s: float | None = None,
                   realtime: bool = False) -> dict[str, Any]:
    policy = load_policy(policy_path, backend)
    spec = policy.spec
    config = robot_config.load(robot or spec.task)
    controller = Controller(policy, config, rate_hz=hz, window=int(hz * seconds) + 16)
    controller.set_goal(spec.goal.frame, (np.asarray(spec.goal.low) + spec.goal.high) / 2)
    ep = Endpoints("127.0.0.1", free_base_port())
    options = ServeOptions(endpoints=ep, wait_s=30.0, seconds=seconds, realtime=realtime,
                           spin_s=DEFAULT_SPIN_S if spin_s is None else spin_s)
    host_before = host_counters()
    with tempfile.TemporaryDirectory(prefix="crl-bench-loop-") as tmp:
        report = Path(tmp) / "robot.json"
        robot_proc = subprocess.Popen(
            [sys.executable, "-m", "crl.testbed.loopback_robot", "--robot",
             str(config.path or spec.task), "--hz", str(hz), "--port", str(ep.port), "--report",
             str(report), *(["--realtime"] if realtime else [])], stdin=subprocess.DEVNULL)
        try:
            final = serve(controller, options, stop=threading.Event())
        finally:
            robot_proc.terminate()
            robot_proc.wait(30)
        robot_side = json.loads(report.read_text()) if report.exists() else {}
    host_after = host_counters()
    stats = controller.stats
    period_error_ms = stats.period_error.values() * 1e3
    e2e = np.asarray(robot_side.get("end_to_end_ms", [np.nan]))
    p99 = percentile(period_error_ms, 99)
    network = spec.network
    return {
        "benchmark": "bench-loop",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": device_info(),
        "versions": versions(),
        "policy": {"path": str(policy_path), "backend": backend, "task": spec.task,
                   "depth": network.depth if network else None,
                   "width": network.width if network else None},
        "hz": hz,
        "seconds": seconds,
        "ticks": stats.counts["ticks"],
        "misses": stats.counts["misses"],
        "safe_ticks": stats.counts["safe_ticks"],
        "period_error_ms": summarize(period_error_ms),
        "policy_latency_ms": summarize(stats.policy_latency.values() * 1e3),
        "end_to_end_ms": {**summarize(e2e), "samples": int(np.isfinite(e2e).sum())},
        "realtime": realtime,
        "spin_s": options.spin_s,
        "host": {"load_average_1min": host_before.get("load_average_1min", float("nan")),
                 "steal_s": host_after.get("steal_s", float("nan"))
                 - host_before.get("steal_s", float("nan"))},
        "runtime_status": final,
        "targets": {"period_error_p99_le_0.5ms": p99 <= PERIOD_ERROR_TARGET_MS,
                    "zero_missed_deadlines": stats.counts["misses"] == 0},
        "period_error_samples_ms": [round(float(v), 4) for v in period_error_ms],
    }


def host_counters() -> dict[str, float]:
    """The CPU time a hypervisor took from this machine (steal, all CPUs) and the load: on a VM
    a missed deadline can be the host's, and these say whether it was. Empty where there is no
    /proc (not Linux)."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()
        load = float(Path("/proc/loadavg").read_text().split()[0])
    except (OSError, IndexError, ValueError):
        return {}
    steal = float(fields[8]) if len(fields) > 8 else float("nan")
    return {"steal_s": steal / os.sysconf("SC_CLK_TCK"), "load_average_1min": load}


def check_plot(plot: Path | None) -> None:
    """Said before a minute of measuring, not after it: the robot's plain install has no
    matplotlib."""
    if plot is not None and importlib.util.find_spec("matplotlib") is None:
        raise PolicyError(f"--plot {plot}: needs matplotlib (pip install matplotlib; the train "
                          "extra has it), or leave --plot out")


def plot_period_error(results: list[dict[str, Any]], path: Path) -> None:
    """A histogram of period errors per run (log count axis: the tail is what matters)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise RuntimeError("--plot needs matplotlib: pip install matplotlib") from None
    fig, ax = plt.subplots(figsize=(7, 4))
    for r in results:
        v = np.asarray(r["period_error_samples_ms"])
        label = (f"{r['hz']:g} Hz, depth {r['policy']['depth']}: p99 "
                 f"{r['period_error_ms']['p99']:.3f} ms, {r['misses']} misses")
        ax.hist(v, bins=100, histtype="step", label=label, log=True)
    ax.axvline(PERIOD_ERROR_TARGET_MS, color="k", ls="--", lw=0.8, label="0.5 ms")
    ax.set_xlabel("period error: wake-up − deadline (ms)")
    ax.set_ylabel("ticks")
    ax.legend(fontsize=8)
    ax.set_title(f"control loop period error ({results[0]['device']['cpu']})", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
