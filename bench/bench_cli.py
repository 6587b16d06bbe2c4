"""What every benchmark script's command line shares: the crl-* convention for a setting that
cannot work (one line on stderr, exit status 2) and a traceback for anything else (a bug).

Imported by the scripts beside it (a script's own folder is its first path entry); it needs tyro
and crl.core, so a training machine without ONNX Runtime and a robot without jax both run it.
"""

from __future__ import annotations

import dataclasses
import datetime
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import tyro

from crl.core.usage import USAGE_ERROR

ConfigT = TypeVar("ConfigT")


class BenchConfigError(ValueError):
    """A benchmark setting that cannot work; the message names it."""


def result_context(benchmark: str, device: dict[str, Any],
                   versions: dict[str, str]) -> dict[str, Any]:
    """What every benchmark's JSON opens with: its name, the date (UTC), the machine and the
    versions of what ran."""
    return {"benchmark": benchmark,
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "device": device, "versions": versions}


def result_header(benchmark: str, device: dict[str, Any], versions: dict[str, str],
                  config: Any, out: Path) -> dict[str, Any]:
    """`result_context`, then the config (a dataclass) with the output path it wrote."""
    return {**result_context(benchmark, device, versions),
            "config": {**dataclasses.asdict(config), "out": str(out)}}


def require_at_least_one(config: object, *names: str) -> None:
    for name in names:
        if getattr(config, name) < 1:
            raise BenchConfigError(f"{name}: must be at least 1, got {getattr(config, name)}")


def run_cli(main: Callable[[ConfigT], Any], config: type[ConfigT], name: str) -> None:
    """`main` on the config the command line gives; the bench's and crl's own errors (a bad
    size, a bad file) as one line and exit 2, any other error with its traceback."""
    try:
        main(tyro.cli(config))
    except ValueError as e:
        if not (isinstance(e, BenchConfigError) or type(e).__module__.startswith("crl.")):
            raise
        print(f"{name}: {e}", file=sys.stderr)
        sys.exit(USAGE_ERROR)
