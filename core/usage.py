"""How every `crl-*` command reports a mistake a user can make: one line on stderr and exit
status `USAGE_ERROR`; a command whose extra is missing names that extra in the one line,
instead of a traceback from deep inside an import.

The plain install is the robot's (the spec, the runtime, `crl-run`); ONNX Runtime comes from the
`cpu` or the `gpu` extra, training and simulation from `train` (Python ≥ 3.11, jax's floor).
Each package's command line has its own entry point, which runs its `main` through
`run_command`; importing this module needs the standard library alone.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable

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
    provides, wherever it is imported, ends the command with that extra's one line."""
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
