"""Commands and backends that a higher floor gives a lower floor's command line, the way ros2cli
finds its verbs: pyproject names them in an entry-point group, and the lower floor loads them
by group, so it never imports the floor above (the sim robot is `crl-sim robot`, the closed loop
`crl-run closed-loop`, the JAX backend `crl-run bench --backend jax`: their code is the
testbed's).
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

SIM_COMMANDS = "crl.commands.sim"  # crl-sim subcommands
TRAIN_COMMANDS = "crl.commands.train"  # crl-train subcommands
RUN_COMMANDS = "crl.commands.run"  # crl-run subcommands
RUN_BACKENDS = "crl.backends.run"  # load_policy backends beyond ort and trt: name -> loader


@dataclass(frozen=True)
class Command:
    """A subcommand: its arguments (a dataclass tyro parses), what runs them, and the errors
    that mean a user's mistake (one line, exit 2) beside the host command's own."""

    args: type[Any]
    run: Callable[[Any], None]
    errors: tuple[type[BaseException], ...] = ()


def names(group: str) -> tuple[str, ...]:
    """What `group` provides, without importing any of it."""
    return tuple(sorted(ep.name for ep in importlib.metadata.entry_points(group=group)))


def load(group: str, name: str) -> Any:
    """The object `name` of `group` (imported now); KeyError when nothing provides it."""
    found = [ep for ep in importlib.metadata.entry_points(group=group) if ep.name == name]
    if not found:
        raise KeyError(name)
    return found[0].load()


def commands(group: str) -> dict[str, Command]:
    """Every subcommand `group` provides, by name."""
    loaded = {ep.name: ep.load() for ep in importlib.metadata.entry_points(group=group)}
    return {name: c for name, c in sorted(loaded.items()) if isinstance(c, Command)}
