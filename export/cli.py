"""`crl-export`: a training run → a policy ONNX file → a TensorRT engine on the target.

    crl-export onnx --run runs/ant --out policy.onnx [--step N] [--fp16 | --int8] [--critic]
    crl-export tensorrt --onnx policy.onnx --out policy.engine [--precision fp16] [--max-batch 64]

Every flag is checked when the command line is parsed, before anything loads. A mistake a user
can make (a bad flag, a missing run, a file that is not a policy, TensorRT absent) is one line on
stderr and exit status 2, as with every crl-* command; nothing half-written is left behind.
`crl-export --version` prints the version.
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import tyro

from crl.core import usage
from crl.core.policy_file import PolicyFileError
from crl.core.spec import SpecError
from crl.core.usage import USAGE_ERROR, UsageError, run_command
from crl.export.onnx_export import Exported, ExportError, export_actor, quantize_int8


@dataclass(frozen=True)
class OnnxArgs:
    """Export a run's deterministic actor, tanh(mean), as ONNX with its policy spec embedded."""

    run: Path
    """training run directory (runs/<name>)"""
    out: Path
    """the .onnx file to write"""
    step: Annotated[int | None, usage.default("the latest")] = None
    """checkpoint step (env steps)"""
    best: bool = False
    """export the checkpoint that best holds the goal under the training ranges (at the goal
    when the episode ends, then time at goal) instead of the latest"""
    fp16: bool = False
    """fp16 weights and compute; inputs and outputs stay float32"""
    int8: bool = False
    """dynamically quantized int8 weights, for ONNX Runtime on CPU (TensorRT cannot build it)"""
    critic: bool = False
    """add the outputs phi, psi and distance = ‖φ(s, π(s, g)) − ψ(g)‖, a reachability readout"""

    def check(self) -> None:
        if self.fp16 and self.int8:
            raise UsageError("--fp16 and --int8: pick one precision")
        if self.step is not None:
            if self.best:
                raise UsageError("--best and --step: pick one checkpoint")
            usage.at_least("--step", self.step, 0)


@dataclass(frozen=True)
class TensorRTArgs:
    """Build a TensorRT engine for this machine's GPU from a policy ONNX file."""

    onnx: Path
    """policy ONNX file from `crl-export onnx`"""
    out: Path
    """the engine to write; its sidecar goes to OUT.json"""
    precision: Annotated[Literal["fp32", "fp16"] | None, usage.default("the ONNX's")] = None
    """engine precision; TensorRT 11 takes fp16 only from an --fp16 export"""
    max_batch: int = 64
    """largest batch the engine accepts (profile 1..N, tuned for batch 1)"""
    timing_cache: Annotated[
        Path | None, usage.default("tensorrt_timing.cache next to OUT")] = None
    """TensorRT timing cache"""

    def check(self) -> None:
        usage.at_least("--max-batch", self.max_batch, 1)


def export_onnx(args: OnnxArgs) -> Exported:
    try:
        from crl.train.checkpoint import CheckpointError, best_step, load_run
    except ImportError as e:
        raise ExportError(
            f"--run: cannot load runs, crl.train.checkpoint is unavailable ({e})"
        ) from None
    from crl.sim.setup import setup_jax

    setup_jax()  # XLA flags, before orbax restores the checkpoint's arrays through jax
    try:
        run = load_run(args.run, best_step(args.run) if args.best else args.step)
    except CheckpointError as e:
        raise ExportError(str(e)) from None
    if not args.int8:
        return export_actor(run.params, run.spec, args.out, fp16=args.fp16, critic=args.critic)
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = export_actor(run.params, run.spec, Path(tmp) / "fp32.onnx", critic=args.critic)
        return quantize_int8(fp32.path, args.out)


COMMANDS: dict[str, Callable[..., Any]] = {"onnx": OnnxArgs, "tensorrt": TensorRTArgs}


DESCRIPTION = ("A training run → a policy ONNX file → a TensorRT engine on the target. "
               "`crl-export --version` prints the version.")


def main(argv: Sequence[str] | None = None) -> None:
    args = tyro.extras.subcommand_cli_from_dict(COMMANDS, prog="crl-export",
                                                description=DESCRIPTION, args=argv)
    try:
        args.check()  # every flag, before anything loads
        if isinstance(args, OnnxArgs):
            e = export_onnx(args)
            print(f"wrote {e.path} ({e.precision}, task {e.spec.task!r}, {e.spec.network}"
                  f"{', critic' if e.critic else ''}, seal sha256 {e.sha256[:12]}…)")
        else:
            from crl.export.tensorrt_build import build_engine

            info = build_engine(args.onnx, args.out, args.precision, args.max_batch,
                                args.timing_cache)
            print(f"wrote {info.path} and {info.sidecar.name} ({info.precision}, TensorRT "
                  f"{info.tensorrt_version}, {info.gpu or 'GPU unknown'}, "
                  f"batch 1..{info.max_batch})")
    except (UsageError, ExportError, PolicyFileError, SpecError,
            OSError) as e:  # OSError: an --out that cannot be written
        print(f"crl-export: error: {e}", file=sys.stderr)
        raise SystemExit(USAGE_ERROR) from None


def crl_export() -> int | None:
    """The `crl-export` console script. `onnx` reads a training run (orbax, jax); `tensorrt`
    needs only onnx and TensorRT, and says itself what to install when TensorRT is missing."""
    subcommand = next((a for a in sys.argv[1:] if not a.startswith("-")), None)
    return run_command("crl-export", main, "train" if subcommand == "onnx" else None)


if __name__ == "__main__":
    main()
