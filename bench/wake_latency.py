"""What holding the CPUs' wake-up latency at 0 (`--realtime`'s `/dev/cpu_dma_latency` request,
`crl.runtime.loop.hold_wake_latency`) does to the closed loop's latency.

Runs `crl-run closed-loop --realtime` (sim robot and runtime as separate processes, both under
SCHED_FIFO) in pairs, alternating: once as shipped, the request in force; once with the request
made void, the device bind-mounted over by /dev/null in a private mount namespace (`unshare
--mount`: nothing outside the run sees it; the processes there still say "held", their write
succeeds). Needs root (the mount namespace, SCHED_FIFO, the device). Writes per run: the
policy's, the runtime's end-to-end and the robot-measured latency (measurement → action
received, on the robot's clock), p50 and p99.

    python bench/wake_latency.py --policy build/test-policy/reacher.onnx --pairs 2 \
        --out bench/results/wake_latency_cpu.json
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench_cli import BenchConfigError, require_at_least_one, result_header, run_cli

from crl.core.atomic import write_json
from crl.runtime.bench import device_info, versions
from crl.runtime.loop import CPU_LATENCY_QOS

HERE = Path(__file__).resolve().parent
TIMEOUT_S = 900


@dataclass(frozen=True)
class Config:
    """The closed loop's policy, goals and how many on/off pairs."""

    policy: Path = Path("build/test-policy/reacher.onnx")
    task: str = "reacher"
    goals: int = 40
    pairs: int = 2
    seed: int = 0
    out: Path = HERE / "results" / "wake_latency_cpu.json"

    def check(self) -> None:
        if not self.policy.is_file():
            raise BenchConfigError(f"policy: no such file {self.policy}")
        require_at_least_one(self, "goals", "pairs")
        if not Path(CPU_LATENCY_QOS).exists():
            raise BenchConfigError(f"{CPU_LATENCY_QOS}: not on this kernel")


def closed_loop(config: Config, held: bool, out: Path) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "crl.runtime.cli", "closed-loop", "--policy",
           str(config.policy), "--task", config.task, "--goals", str(config.goals), "--seed",
           str(config.seed), "--realtime", "--out", str(out)]
    if not held:  # the request goes to /dev/null, in this run's own mount namespace only
        cmd = ["unshare", "--mount", "sh", "-c",
               f"mount --bind /dev/null {CPU_LATENCY_QOS} && exec {shlex.join(cmd)}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT_S)
    if proc.returncode != 0:
        raise RuntimeError(f"closed loop ({'held' if held else 'void'}) failed: "
                           f"{proc.stderr[-1500:]}")
    r = json.loads(out.read_text())
    rt = r["runtime"]
    return {"wake_latency_held": held, "goals": len(r["goals"]),
            "reached": sum(g["success"] for g in r["goals"]),
            "policy_ms": {"p50": rt["policy_latency_p50_ms"], "p99": rt["policy_latency_p99_ms"]},
            "runtime_end_to_end_ms": {"p50": rt["end_to_end_p50_ms"],
                                      "p99": rt["end_to_end_p99_ms"]},
            "robot_end_to_end_ms": {k: r["robot_end_to_end_ms"][k] for k in ("p50", "p99")},
            "misses": rt.get("misses"), "misses_scheduling": rt.get("misses_scheduling")}


def main(config: Config) -> dict[str, Any]:
    config.check()
    runs = []
    with tempfile.TemporaryDirectory(prefix="crl-wake-") as tmp:
        for pair in range(config.pairs):
            for held in (True, False):
                run = closed_loop(config, held, Path(tmp) / f"{pair}_{held}.json")
                runs.append(run)
                print(f"pair {pair + 1}, wake-up latency {'held' if held else 'void'}: robot p50 "
                      f"{run['robot_end_to_end_ms']['p50']:.2f} p99 "
                      f"{run['robot_end_to_end_ms']['p99']:.2f} ms, runtime p99 "
                      f"{run['runtime_end_to_end_ms']['p99']:.2f} ms", flush=True)
    result = result_header("wake_latency", device_info(), versions(), config, config.out)
    result["config"]["policy"] = str(config.policy)
    result["runs"] = runs
    write_json(config.out, result)
    print(f"wrote {config.out}")
    return result


if __name__ == "__main__":
    run_cli(main, Config, "wake_latency")
