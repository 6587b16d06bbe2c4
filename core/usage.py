"""How every `crl-*` command reports a mistake a user can make: one line on stderr and exit
status `USAGE_ERROR`; a command whose extra is missing names that extra in the one line,
instead of a traceback from deep inside an import.

The plain install is the robot's (the spec, the runtime, `crl-run`); ONNX Runtime comes from the
`cpu` or the `gpu` extra, training and simulation from `train` (Python ≥ 3.11, jax's floor).
Each package's command line has its own entry point, which runs its `main` through
`run_command` (which also answers `--version`); importing this module needs the standard
library alone.

Every command checks its flags right after parsing, before any work, with the checks below: a
value that cannot work raises `UsageError`, whose one line names the flag and what it takes.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import math
import os
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

USAGE_ERROR = 2  # every crl-* command's status for a mistake a user can make (argparse's too)
TRAIN_PYTHON = (3, 11)

# The modules each extra provides, as imported (a ModuleNotFoundError names one of these).
EXTRA_MODULES: dict[str, tuple[str, ...]] = {
    "train": ("jax", "jaxlib", "flax", "optax", "orbax", "mujoco.mjx", "tensorboardX",
              "matplotlib", "imageio", "imageio_ffmpeg", "rich"),
    "cpu": ("onnxruntime",),
    "gpu": ("tensorrt", "cuda"),
}
# What `run_command` checks before a command that needs the whole extra starts.
REQUIRED: dict[str, tuple[str, ...]] = {
    "train": ("jax", "flax", "optax", "orbax.checkpoint", "mujoco.mjx"),
}

ORT_MISSING = (
    "ONNX Runtime is not installed: pip install 'crl[cpu]', or 'crl[gpu]' for its CUDA and "
    "TensorRT providers (one of the two, never both; on a Jetson, the Jetson onnxruntime-gpu "
    "wheel; docs/robot.md: On the robot: install)"
)


class ConfigError(ValueError):
    """A configuration that cannot work (a task, its domain randomization, a training run);
    the message names the field and what to change."""


class UsageError(ValueError):
    """A flag whose value cannot work, found when the command line is parsed: the message
    names the flag, the value given and what the flag takes."""


# What a path flag may end in: what the renderer writes, and what matplotlib draws a plot to.
VIDEO_SUFFIXES = (".mp4",)
IMAGE_SUFFIXES = (".png",)
PLOT_SUFFIXES = (".png", ".svg", ".pdf")
SEEDS = 2**32  # jax's PRNG keys hold 32 bits of a seed: beyond them seeds repeat, or overflow
PORTS = 65535


CM_PER_M = 100  # distances are metres in code and files, centimetres where printed

def _shown(value: object) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def positive(flag: str, value: float) -> None:
    """A rate, a duration or a factor: greater than 0, and finite."""
    if not (math.isfinite(value) and value > 0):
        raise UsageError(f"{flag} {_shown(value)}: must be positive and finite")


def non_negative(flag: str, value: float, zero: str) -> None:
    """A duration or an amount that may be 0, which means `zero`."""
    if not (math.isfinite(value) and value >= 0):
        raise UsageError(f"{flag} {_shown(value)}: must be >= 0 and finite (0: {zero})")


def at_least(flag: str, value: int, low: int) -> None:
    """A count, a size or an index."""
    if value < low:
        raise UsageError(f"{flag} {value}: must be at least {low}")


def finite(flag: str, values: Iterable[float]) -> None:
    """Coordinates: every one a finite number."""
    values = tuple(values)
    if not all(math.isfinite(v) for v in values):
        raise UsageError(f"{flag} {' '.join(map(_shown, values))}: must be finite numbers")


def within(flag: str, value: float, low: float, high: float) -> None:
    if not (math.isfinite(value) and low <= value <= high):
        raise UsageError(f"{flag} {_shown(value)}: must be a number from {low:g} to {high:g}")


def seed(flag: str, value: int) -> None:
    if not 0 <= value < SEEDS:
        raise UsageError(f"{flag} {value}: must be between 0 and {SEEDS - 1}")


def port(flag: str, value: int, count: int) -> None:
    """The first of `count` consecutive ports."""
    top = PORTS - (count - 1)
    if not 1 <= value <= top:
        raise UsageError(f"{flag} {value}: must be between 1 and {top} (it and the next "
                         f"{count - 1} ports are used)")


def output(flag: str, path: Path | None) -> None:
    """A file written when the work is done (None: not asked for): a path that names a folder,
    or whose folder cannot be made or written, is refused now rather than after the work, whose
    result would then be lost."""
    if path is None:
        return
    if path.is_dir():
        raise UsageError(f"{flag} {path}: a folder; name the file to write")
    folder = path.absolute().parent
    while not folder.exists() and folder != folder.parent:  # the folder is made when written
        folder = folder.parent
    if not folder.is_dir():
        raise UsageError(f"{flag} {path}: {folder} is not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UsageError(f"{flag} {path}: cannot write in {folder}")


def suffix(flag: str, path: Path | None, suffixes: tuple[str, ...]) -> None:
    """A file to write, in the format its suffix names (None: not asked for)."""
    if path is not None and path.suffix.lower() not in suffixes:
        either = " or ".join(filter(None, (", ".join(suffixes[:-1]), suffixes[-1])))
        raise UsageError(f"{flag} {path}: must end in {either}")


def check_flags(args: object) -> None:
    """Run the flags' own `check()`, where the parsed arguments (a subcommand's dataclass) have
    one: every command calls this right after parsing, before any work."""
    check = getattr(args, "check", None)
    if check is not None:
        check()


def default(text: str) -> Any:
    """Help for a default its value does not say (None or '' standing for something):
    `Annotated[T, default("the latest")]` ends the help with `(default: the latest)` in place
    of tyro's `(default: None)`, so each flag shows one default."""
    import tyro  # here, not above: importing this module needs the standard library alone

    return tyro.conf.arg(help_behavior_hint=f"(default: {text})")


def version_line(command: str) -> str:
    """What `command --version` prints: the command and the installed package's version."""
    try:
        version = importlib.metadata.version("crl")
    except importlib.metadata.PackageNotFoundError:
        version = "(crl is not installed: no version)"
    return f"{command} {version}"


def needs(command: str, extra: str) -> str:
    """The one line that names the extra `command` needs and how to install it."""
    if extra == "cpu":
        return f"{command}: {ORT_MISSING}"
    line = f"{command}: needs the {extra} extra: pip install 'crl[{extra}]'"
    if extra == "train" and sys.version_info[:2] < TRAIN_PYTHON:
        here = ".".join(map(str, sys.version_info[:3]))
        line += (f", which needs Python ≥ {'.'.join(map(str, TRAIN_PYTHON))} (jax); this is "
                 f"Python {here}")
    return line


def extra_of(error: ImportError) -> str | None:
    """The extra that provides the module a ModuleNotFoundError is about, or None."""
    name = getattr(error, "name", None) or ""
    for extra, modules in EXTRA_MODULES.items():
        if any(name == m or name.startswith(m + ".") for m in modules):
            return extra
    return None


def _present(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ImportError:  # a dotted name whose parent package is missing
        return False


def missing(extra: str) -> list[str]:
    """The modules `extra` needs that cannot be imported here."""
    if extra == "train" and sys.version_info[:2] < TRAIN_PYTHON:
        return list(REQUIRED["train"])
    return [m for m in REQUIRED.get(extra, EXTRA_MODULES[extra]) if not _present(m)]


def run_command(command: str, main: Callable[[], int | None], extra: str | None) -> int | None:
    """Run a command's `main`, first checking `extra` if given; a missing module that an extra
    provides, wherever it is imported, ends the command with that extra's one line. `--version`
    needs no extra: it prints the version line."""
    if sys.argv[1:2] == ["--version"]:
        print(version_line(command))
        return 0
    try:
        if extra is not None and missing(extra):
            print(needs(command, extra), file=sys.stderr)
            return USAGE_ERROR
        return main()
    except ModuleNotFoundError as e:
        found = extra_of(e)
        if found is None:
            raise
        print(needs(command, found), file=sys.stderr)
        return USAGE_ERROR
