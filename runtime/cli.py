"""`crl-run`: run exported policies on a robot computer.

    crl-run bench --policy policy.onnx --backend ort --out latency.json --plot latency.png

Subcommands are dataclasses dispatched by type, so later ones (the control loop, the sim robot
bridge) slot in beside `bench`. A user mistake is one line on stderr and exit status 1.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import tyro

from crl.runtime.policy import PolicyError
from crl.sim.spec import SpecError


@dataclass(frozen=True)
class BenchArgs:
    """Measure per-call policy latency (p50/p90/p99/max) and throughput on this machine."""

    policy: Path
    """policy.onnx (backend ort), policy.engine (trt) or a run directory (jax)"""
    out: Path
    """the JSON result to write"""
    backend: Literal["ort", "trt", "jax"] = "ort"
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
    providers: tuple[str, ...] = ()
    """ONNX Runtime execution providers, best first, e.g. CUDAExecutionProvider (default: the
    best this onnxruntime has: TensorRT, then CUDA, then CPU)"""
    plot: Path | None = None
    """latency histogram PNG to write"""


def parse_batches(text: str) -> tuple[int, ...]:
    try:
        batches = tuple(int(b) for b in text.split(",") if b.strip())
    except ValueError:
        raise PolicyError(f"--batch: {text!r} is not a comma-separated list of integers") from None
    if not batches or min(batches) < 1:
        raise PolicyError(f"--batch: {text!r} needs positive batch sizes, e.g. 1,8,64")
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


def main(argv: Sequence[str] | None = None) -> None:
    args = tyro.extras.subcommand_cli_from_dict({"bench": BenchArgs}, prog="crl-run", args=argv)
    try:
        if isinstance(args, BenchArgs):
            bench(args)
    except (PolicyError, SpecError, OSError) as e:  # OSError: an --out that cannot be written
        print(f"crl-run: error: {e}", file=sys.stderr)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
