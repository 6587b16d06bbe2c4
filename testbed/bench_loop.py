"""`crl-run bench-loop`: the control loop timed against a loopback robot in another process.

The runtime runs here exactly as `crl-run serve` runs it (controller, ZMQ transport, fixed-rate
loop), at `--hz` for `--seconds`, with a goal at the centre of the policy's goal box; the
loopback robot (`crl.testbed.loopback_robot`) publishes observations at the same rate and
timestamps each action's arrival. Reported: period error (wake-up − deadline) percentiles and
histogram, missed deadlines, policy latency, and end-to-end latency (observation stamp → action
received by the robot, on the robot's clock). Progress goes to stderr as the loop runs
(`LoopProgress`). With `baseline_s` (`--plot` asks for one) the platform baseline runs after the
loop: the same fixed-rate loop with nothing to do at each tick, as bench/loop_latency.py
measures it, drawn under the loop's histogram: what this machine does to a loop that does no
work.
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
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import numpy as np

from crl.core.atomic import write_atomic
from crl.core.latency import percentile, summarize
from crl.runtime import robot_config
from crl.runtime.bench import device_info, versions
from crl.runtime.controller import Controller, Stats
from crl.runtime.loop import DEFAULT_SPIN_S, FixedRateLoop
from crl.runtime.policy import PolicyError, load_policy
from crl.runtime.serve import ServeOptions, serve
from crl.runtime.transport import Endpoints
from crl.testbed.closed_loop import free_base_port

PERIOD_ERROR_TARGET_MS = 0.5
BASELINE_S = 10.0  # the platform baseline `crl-run bench-loop --plot` runs: at most this long
PERIOD_ERROR_FLOOR_MS = 1e-3  # the plot's time axis starts here (1 us)


def run_bench_loop(policy_path: Path, *, hz: float, seconds: float, backend: str = "ort",
                   robot: str | None = None, spin_s: float | None = None,
                   realtime: bool = False, clock_ppm: float = 0.0, baseline_s: float = 0.0,
                   progress: LoopProgress | None = None) -> dict[str, Any]:
    """Time the loop against a loopback robot publishing at `hz` on its own clock (`clock_ppm`
    fast or slow against this computer's); then, for `baseline_s` > 0, the platform baseline
    (`platform_baseline`). `progress` is told what runs and, from the loop, how far it is."""
    say = progress.say if progress is not None else (lambda line: None)
    say(f"{hz:g} Hz for {seconds:g} s against a loopback robot; starting it")
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
             str(report), "--clock-ppm", str(clock_ppm), *(["--realtime"] if realtime else [])],
            stdin=subprocess.DEVNULL)
        try:
            final = serve(controller, options, on_status=progress, stop=threading.Event())
            if progress is not None:
                progress.final(final)
        finally:
            if progress is not None:
                progress.close()
            robot_proc.terminate()
            robot_proc.wait(30)
        robot_side = json.loads(report.read_text()) if report.exists() else {}
    host_after = host_counters()
    baseline = None
    if baseline_s > 0:
        say(f"platform baseline: the same loop with empty ticks at {hz:g} Hz for {baseline_s:g} s")
        baseline = platform_baseline(hz, baseline_s, options.spin_s)
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
        "clock_ppm": clock_ppm,
        "ticks": stats.counts["ticks"],
        "misses": stats.counts["misses"],
        "samples_skipped": stats.counts["samples_skipped"],
        "samples_repeated": stats.counts["samples_repeated"],
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
        "period_error_samples_ms": _samples(period_error_ms),
        **({"platform_baseline": baseline} if baseline is not None else {}),
    }


def _samples(ms: np.ndarray) -> list[float]:
    return [round(float(v), 4) for v in ms]


def platform_baseline(hz: float, seconds: float, spin_s: float) -> dict[str, Any]:
    """The fixed-rate loop with nothing to do at each tick, at `hz` for `seconds`, as
    bench/loop_latency.py's platform baseline runs it (same wait, spin and scheduling): how late
    this machine wakes a loop that does no work. Its lateness and misses are the machine's (on a
    VM, the host's), not the controller's."""
    ticks = max(1, round(hz * seconds))
    stats = Stats(window=ticks + 16)
    FixedRateLoop(1.0 / hz, stats, spin_s=spin_s).run(lambda deadline, now: None,
                                                      threading.Event(), max_ticks=ticks)
    ms = stats.period_error.values() * 1e3
    return {"hz": hz, "seconds": seconds, "ticks": ticks, "misses": stats.counts["misses"],
            "spin_s": spin_s, "period_error_ms": summarize(ms),
            "period_error_samples_ms": _samples(ms)}


class LoopProgress:
    """`crl-run bench-loop`'s progress on stderr: a line with the seconds run of the total, the
    ticks, the misses and the p99 period error so far; rewritten in place every second on a
    terminal, a new line every 10 s in a log.

    It is the serve loop's status callback (`on_status`, 5 times a second, in the loop's own
    thread after the tick's action went out), and it only writes a short line: anything that
    draws shares the interpreter with the loop being timed, and a rich progress bar's redraw
    took about 1 ms (8 ms at its p99) on the 2-core VM, against a 0.5 ms period-error target.
    """

    def __init__(self, hz: float, seconds: float, stream: IO[str] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.hz, self.seconds, self.clock = hz, seconds, clock
        self.stream = stream if stream is not None else sys.stderr
        self.tty = self.stream.isatty()
        self.every = 1.0 if self.tty else 10.0
        self.started: float | None = None  # when the loop's first tick was (from its count)
        self.next = 0.0
        self.unsaid: tuple[float, dict[str, Any]] | None = None  # the last status, not shown
        self.open_line = False  # a terminal line to end before the next one

    def __call__(self, status: dict[str, Any]) -> None:
        now = self.clock()
        if now < self.next:
            self.unsaid = (now, status)
            return
        self.next, self.unsaid = now + self.every, None
        self._show(now, status)

    def final(self, status: dict[str, Any]) -> None:
        """The loop's last status (serve's return, once it ran its seconds): shown at once, the
        line ended."""
        self.unsaid = None
        self._show(self.clock(), status, done=True)
        self.close()

    def _show(self, now: float, status: dict[str, Any], done: bool = False) -> None:
        if self.started is None:  # from the first status's tick count
            self.started = now - int(status["ticks"]) / self.hz
        elapsed = self.seconds if done else min(now - self.started, self.seconds)
        line = (f"bench-loop: {elapsed:.0f}/{self.seconds:g} s, {status['ticks']} ticks, "
                f"{status['misses']} missed, period error p99 "
                f"{float(status['period_error_p99_ms']):.3f} ms")
        if self.tty:
            self.stream.write(f"\r{line}\x1b[K")
            self.open_line = True
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def say(self, line: str) -> None:
        """A line of its own: what runs now."""
        self.close()
        self.stream.write(f"bench-loop: {line}\n")
        self.stream.flush()

    def close(self) -> None:
        """Show the last status if it was not, and end the line a terminal rewrites."""
        if self.unsaid is not None:
            self._show(*self.unsaid)
            self.unsaid = None
        if self.open_line:
            self.stream.write("\n")
            self.stream.flush()
            self.open_line = False


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
    """Draw `period_error_figure` to `path` (.png, .svg or .pdf)."""
    try:
        fig = period_error_figure(results)
    except ImportError:
        raise RuntimeError("--plot needs matplotlib: pip install matplotlib") from None
    write_atomic(path, lambda tmp: fig.savefig(tmp, format=path.suffix.lstrip(".") or "png",
                                               dpi=130))


def period_error_figure(results: list[dict[str, Any]]) -> Any:
    """A histogram of period errors per run, over the platform baseline of each run that has
    one (grey): the share of ticks on a log axis (the tail is what matters, and runs of other
    lengths compare), against a log time axis from 1 us (earlier wake-ups go in the first bin)
    to past the longest, with the 0.5 ms target and one control period marked."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter

    baselines = [r["platform_baseline"] for r in results if r.get("platform_baseline")]
    every = np.concatenate([np.asarray(x["period_error_samples_ms"], float)
                            for x in (*results, *baselines)])
    periods = sorted({1e3 / r["hz"] for r in results})
    low = PERIOD_ERROR_FLOOR_MS
    high = max(float(np.max(every, initial=0.0)), PERIOD_ERROR_TARGET_MS, *periods) * 1.3
    bins = np.geomspace(low, high, 100).tolist()
    fig = Figure(figsize=(9, 4.8), layout="constrained")
    ax = fig.subplots()

    def histogram(samples: list[float], **style: Any) -> None:
        v = np.clip(np.asarray(samples, float), low, None)
        ax.hist(v, bins=bins, weights=np.full(v.size, 100.0 / max(v.size, 1)), **style)

    for b in baselines:
        histogram(b["period_error_samples_ms"], color="0.55", alpha=0.45,
                  label=f"platform baseline: empty ticks at {b['hz']:g} Hz for {b['seconds']:g} "
                        f"s, p99 {b['period_error_ms']['p99']:.3f} ms, {b['misses']} misses")
    for i, r in enumerate(results):
        histogram(r["period_error_samples_ms"], histtype="step", lw=1.6, color=f"C{i}",
                  label=f"{r['hz']:g} Hz, depth {r['policy']['depth']}: p99 "
                        f"{r['period_error_ms']['p99']:.3f} ms, {r['misses']} misses")
    ax.axvline(PERIOD_ERROR_TARGET_MS, color="k", ls="--", lw=1,
               label=f"target: p99 ≤ {PERIOD_ERROR_TARGET_MS:g} ms")
    for period in periods:
        ax.axvline(period, color="tab:red", ls="-.", lw=1.2,
                   label=f"one control period ({period:g} ms, {1e3 / period:g} Hz)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    plain = FuncFormatter(lambda v, _: f"{v:g}")
    ax.xaxis.set_major_formatter(plain)
    ax.yaxis.set_major_formatter(plain)
    ax.set_xlabel("period error: wake-up − when the tick was due (ms, log scale; the first bin "
                  f"holds all up to {low:g})")
    ax.set_ylabel("share of ticks (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=9, loc="upper right")
    ax.set_title(f"control loop period error ({results[0]['device']['cpu']})", fontsize=11)
    return fig
