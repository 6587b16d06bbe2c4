"""One command-line convention for `crl-export` and `crl-run` (as for `crl-sim` and
`crl-train`): a mistake a user can make exits 2 with one line on stderr and no traceback, and
`--help` lists every subcommand.

Runs without jax (the robot's install): the mistakes below are found before anything loads a
training run.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from crl.core.usage import USAGE_ERROR
from crl.export import cli as export_cli
from crl.runtime import cli as run_cli

MAINS: dict[str, Callable[[list[str]], object]] = {
    "crl-export": export_cli.main, "crl-run": run_cli.main,
}


def _exit(main: Callable[[list[str]], object], argv: list[str],
          capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as e:
        main(argv)
    out, err = capsys.readouterr()
    return int(e.value.code or 0), out, err


@pytest.mark.parametrize(("prog", "commands"), [("crl-export", export_cli.COMMANDS),
                                                ("crl-run", run_cli.COMMANDS)])
def test_help_lists_every_subcommand(prog: str, commands: dict[str, object],
                                     capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _exit(MAINS[prog], ["--help"], capsys)
    assert code == 0 and out.startswith(f"usage: {prog}")
    listed = set(re.findall(r"•\s+([\w-]+)", out))
    assert listed == set(commands), out


# (command, argv; {tmp} is a fresh folder, what the one line says)
MISTAKES = [
    ("crl-export", ["onnx", "--run", "{tmp}/nope", "--out", "{tmp}/p.onnx"], "not a training run"),
    ("crl-export", ["onnx", "--run", "{tmp}", "--out", "{tmp}/p.onnx", "--fp16", "--int8"],
     "pick one"),
    ("crl-export", ["tensorrt", "--onnx", "{tmp}/nope.onnx", "--out", "{tmp}/p.engine"],
     "no such file"),
    ("crl-run", ["bench", "--policy", "{tmp}/nope.onnx", "--out", "{tmp}/r.json"],
     "no such file"),
    ("crl-run", ["goal"], "give the goal's coordinates"),
    ("crl-run", ["serve", "--policy", "{tmp}/nope.onnx"], "no such file"),
]


@pytest.mark.parametrize(("prog", "argv", "says"), MISTAKES)
def test_a_mistake_is_one_line_and_exit_2(prog: str, argv: list[str], says: str, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    if says == "not a training run":
        pytest.importorskip("jax", reason="crl-export onnx reads training runs: the train extra")
    argv = [a.format(tmp=tmp_path) for a in argv]
    code, _, err = _exit(MAINS[prog], argv, capsys)
    lines = err.strip().splitlines()
    assert code == USAGE_ERROR and len(lines) == 1, err
    assert lines[0].startswith(f"{prog}: error: ") and says in lines[0], err
    assert list(tmp_path.iterdir()) == []  # nothing written


@pytest.mark.parametrize("prog", sorted(MAINS))
@pytest.mark.parametrize("argv", [[], ["no-such-command"], ["--no-such-flag"]])
def test_a_malformed_command_line_exits_2_without_a_traceback(
    prog: str, argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """What the argument parser refuses (tyro's message, which points to --help)."""
    code, _, err = _exit(MAINS[prog], argv, capsys)
    assert code == USAGE_ERROR and "Traceback" not in err and f"{prog} --help" in err, err


@pytest.mark.parametrize(("prog", "argv"), [
    ("crl-export", ["tensorrt", "--onnx", "x.onnx", "--out", "x.engine"]),
    ("crl-run", ["bench", "--policy", "x.onnx", "--out", "r.json"]),
])
def test_installed_commands_follow_it(prog: str, argv: list[str], tmp_path: Path) -> None:
    """The console scripts as a user runs them (through crl.core.usage)."""
    exe = Path(sys.executable).with_name(prog)
    if not exe.exists():
        pytest.skip(f"{exe} is not installed (not an installed venv)")
    r = subprocess.run([str(exe), *argv], capture_output=True, text=True, timeout=300,
                       cwd=tmp_path)
    assert r.returncode == USAGE_ERROR, r.stderr
    assert r.stderr.startswith(f"{prog}: error:") and len(r.stderr.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []
