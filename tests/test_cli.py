"""One command-line convention for `crl-export` and `crl-run` (as for `crl-sim` and
`crl-train`): a mistake a user can make exits 2 with one line on stderr and no traceback, and
`--help` lists every subcommand.

Runs without jax (the robot's install): the mistakes below are found before anything loads a
training run. Every flag of every command, crl-sim's and crl-train's too, has help text, shows
one default, and is checked when the command line is parsed (crl-train's checks need the train
extra: it sets up jax first).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.metadata
import re
import subprocess
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import tyro

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


# ------------------------------------------------------------------ every flag of every command
# Each subcommand of the four commands: (prog, subcommand, its arguments' dataclass, the default
# tyro parses it against). crl-train TASK parses against a preset's config.
def _subcommands() -> list[tuple[str, str, Any, Any]]:
    from crl.core import plugins
    from crl.sim import cli as sim_cli
    from crl.train import cli as train_cli
    from crl.train.config import preset

    train_default = train_cli.TrainArgs(
        config=dataclasses.replace(preset("paper", "reacher"), task=tyro.MISSING))
    found = [("crl-train", "TASK", tyro.conf.OmitArgPrefixes[train_cli.TrainArgs], train_default),
             ("crl-train", "eval", train_cli.EvalArgs, None),
             ("crl-train", "analyze", train_cli.AnalyzeArgs, None)]
    tables = {
        "crl-sim": {**{n: c.args for n, c in sim_cli.COMMANDS.items()},
                    **{n: c.args for n, c in plugins.commands(plugins.SIM_COMMANDS).items()}},
        "crl-train": {n: c.args for n, c in plugins.commands(plugins.TRAIN_COMMANDS).items()},
        "crl-export": dict(export_cli.COMMANDS),
        "crl-run": {n: c.args for n, c in run_cli.COMMANDS.items()},
    }
    found += [(prog, name, args, None) for prog, table in tables.items()
              for name, args in table.items()]
    return found


SUBCOMMANDS = _subcommands()
BEHAVIOR_HINT = re.compile(r"\s*\((default: .*|default if used: .*|required|optional)\)\s*$",
                           re.DOTALL)


def _options(args: Any, default: Any) -> list[argparse.Action]:
    """The options tyro makes of `args` (its argparse rendition: the help text and metavar of
    each flag, as --help prints them)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # get_parser: still in tyro 1.0
        parser = (tyro.extras.get_parser(args) if default is None
                  else tyro.extras.get_parser(args, default=default))
    return [a for a in parser._actions if a.dest != "help"]


def _name(action: argparse.Action) -> str:
    return action.option_strings[0] if action.option_strings else action.dest


@pytest.mark.parametrize(("prog", "sub", "args", "default"), SUBCOMMANDS,
                         ids=[f"{p}-{s}" for p, s, _, _ in SUBCOMMANDS])
def test_every_option_has_help_and_shows_one_default(prog: str, sub: str, args: Any,
                                                     default: Any) -> None:
    for action in _options(args, default):
        text = action.help or ""
        assert text.count("(default") <= 1, f"{prog} {sub} {_name(action)}: {text!r}"
        assert BEHAVIOR_HINT.sub("", text).strip(), f"{prog} {sub} {_name(action)}: no help"


# The argv each subcommand needs before a flag is tried ({tmp}: a fresh folder; nothing there
# exists, so only the flags' checks can refuse), then every numeric flag and every plot, curve
# and video path with the values it refuses: 0, negative, nan and inf where they apply.
BASE: dict[tuple[str, str], list[str]] = {
    ("crl-sim", "rollout"): ["rollout", "reacher"],
    ("crl-sim", "robot"): ["robot", "reacher", "--dr", "off"],
    ("crl-train", "TASK"): ["reacher"],
    ("crl-train", "eval"): ["eval", "--run", "{tmp}/run"],
    ("crl-train", "analyze"): ["analyze", "--run", "{tmp}/run"],
    ("crl-train", "robustness"): ["robustness", "--run", "{tmp}/run"],
    ("crl-export", "onnx"): ["onnx", "--run", "{tmp}/run", "--out", "{tmp}/p.onnx"],
    ("crl-export", "tensorrt"): ["tensorrt", "--onnx", "{tmp}/p.onnx", "--out", "{tmp}/p.engine"],
    ("crl-run", "serve"): ["serve", "--policy", "{tmp}/p.onnx"],
    ("crl-run", "goal"): ["goal", "0.1", "0.05"],
    ("crl-run", "bench"): ["bench", "--policy", "{tmp}/p.onnx", "--out", "{tmp}/r.json"],
    ("crl-run", "closed-loop"): ["closed-loop", "--policy", "{tmp}/p.onnx", "--task", "reacher",
                                 "--out", "{tmp}/r.json"],
    ("crl-run", "bench-loop"): ["bench-loop", "--policy", "{tmp}/p.onnx", "--out",
                                "{tmp}/r.json"],
}
COUNT = ("0", "-1")  # at least 1
INDEX = ("-1",)  # at least 0 (a checkpoint step, a process index; 0 is one)
SEED = ("-1", "4294967296")  # jax keys hold 32 bits
POSITIVE = ("0", "-1", "nan", "inf")  # a rate, a duration, a factor
ZERO_OK = ("-1", "nan", "inf")  # 0 is documented: back to back, until Ctrl-C, no ramp...
PORT = ("0", "-1", "65532")  # the five ports P..P+4 must exist
PLOT = ("{tmp}/plot.txt", "{tmp}/plot")
WEIGHT = ("-1", "nan", "inf")  # a loss weight: 0 turns the term off
PPM = ("nan", "inf", "20000", "-20000")  # a clock's error: a crystal's, not a wrong rate
# A file written when the work ends: a folder, or a path whose folder is a file, is refused at
# once (found after a run, its result would be lost).
OUTPUT = ("{tmp}", "/dev/null/result.json")
BAD: dict[tuple[str, str], dict[str, tuple[str, ...]]] = {
    ("crl-sim", "rollout"): {"--episodes": COUNT, "--seed": SEED, "--width": (*COUNT, "15"),
                             "--height": (*COUNT, "15"), "--video": ("{tmp}/v.avi",),
                             "--frames": ("{tmp}/f.jpg",)},
    ("crl-sim", "robot"): {"--seed": SEED, "--speed": POSITIVE, "--port": PORT,
                           "--episodes": ("-1",), "--clock-ppm": PPM},
    ("crl-train", "TASK"): {
        "--seed": SEED, "--total-steps": COUNT, "--devices": COUNT, "--num-processes": COUNT,
        "--process-id": INDEX, "--keep-checkpoints": COUNT, "--log-every": COUNT,
        "--learners": ("0", "-4", "6"), "--depth": ("0", "-4", "6"),
        "--width": COUNT, "--repr-dim": COUNT, "--actor-depth": ("0", "6"),
        "--actor-width": COUNT, "--critic-depth": ("0", "6"), "--critic-width": COUNT,
        "--batch-size": ("0", "1"), "--gamma": ("0", "1", "nan", "inf"),
        "--logsumexp-penalty": WEIGHT, "--entropy-scale": WEIGHT, "--actor-lr": POSITIVE,
        "--critic-lr": POSITIVE, "--alpha-lr": POSITIVE,
        "--lr-decay": ("0", "-1", "1.5", "nan", "inf"), "--action-rate-penalty": WEIGHT,
        "--temporal-penalty": WEIGHT, "--spatial-penalty": WEIGHT, "--spatial-sigma": WEIGHT,
        "--num-envs": COUNT, "--unroll-length": COUNT, "--env-steps-per-update": POSITIVE,
        "--buffer-steps": COUNT, "--min-replay-steps": COUNT, "--eval-every": COUNT,
        "--eval-episodes": COUNT,
    },
    ("crl-train", "eval"): {"--episodes": COUNT, "--seed": SEED, "--step": INDEX,
                            "--video": ("{tmp}/v.gif",), "--frames": ("{tmp}/f.jpg",),
                            "--curve": PLOT},
    ("crl-train", "analyze"): {"--step": INDEX, "--goal": ("nan 0", "0 inf"),
                               "--grid": ("1", "0", "-1"), "--seed": SEED},
    ("crl-train", "robustness"): {"--step": INDEX, "--scales": ("0", "-1", "nan", "inf"),
                                  "--noise": WEIGHT, "--delays": ("-1", "101"),
                                  "--episodes": (*COUNT, "100001"), "--seed": SEED,
                                  "--threshold": ("0", "1.5", "nan", "inf")},
    ("crl-export", "onnx"): {"--step": INDEX},
    ("crl-export", "tensorrt"): {"--max-batch": COUNT},
    ("crl-run", "serve"): {"--port": PORT, "--rate": ZERO_OK, "--speed": POSITIVE,
                           "--seconds": ZERO_OK, "--wait": POSITIVE, "--spin": ZERO_OK,
                           "--threads": COUNT, "--max-observation-age": POSITIVE,
                           "--goal-margin": ZERO_OK, "--max-action-change": POSITIVE,
                           "--soft-start": ZERO_OK, "--max-joint-speed": POSITIVE,
                           "--goal": ("nan 0", "0 inf"), "--stats-out": OUTPUT},
    ("crl-run", "goal"): {"--port": PORT, "--timeout": POSITIVE, "values": ("nan", "inf")},
    ("crl-run", "bench"): {"--iterations": COUNT, "--rate": ZERO_OK, "--threads": COUNT,
                           "--plot": PLOT, "--out": OUTPUT},
    ("crl-run", "closed-loop"): {"--seed": SEED, "--goals": COUNT, "--speed": POSITIVE,
                                 "--clock-ppm": PPM, "--out": OUTPUT},
    ("crl-run", "bench-loop"): {"--hz": POSITIVE, "--seconds": POSITIVE, "--spin": ZERO_OK,
                                "--plot": PLOT, "--out": OUTPUT},
}
PATH_FLAGS = ("--plot", "--curve", "--video", "--frames")


def _checked_flags(args: Any, default: Any) -> set[str]:
    """The flags that take numbers, and the plot, curve and video paths."""
    return {_name(a) for a in _options(args, default)
            if re.search(r"\b(INT|FLOAT)\b", str(a.metavar)) or _name(a) in PATH_FLAGS}


@pytest.mark.parametrize(("prog", "sub", "args", "default"), SUBCOMMANDS,
                         ids=[f"{p}-{s}" for p, s, _, _ in SUBCOMMANDS])
def test_the_bad_values_cover_every_numeric_and_path_flag(prog: str, sub: str, args: Any,
                                                          default: Any) -> None:
    options = {_name(a) for a in _options(args, default)}
    tried = set(BAD.get((prog, sub), {}))
    assert _checked_flags(args, default) <= tried, f"{prog} {sub}: add its flags to BAD"
    assert tried <= options, f"{prog} {sub}: BAD names flags it does not have"


def _main(prog: str) -> Callable[[list[str]], object]:
    if prog in MAINS:
        return MAINS[prog]
    if prog == "crl-train":
        pytest.importorskip("jax", reason="crl-train: the train extra")
        from crl.train.cli import main
        return main
    from crl.sim.cli import main as sim_main  # its flags are checked before jax is set up
    return sim_main


BAD_CASES = [(prog, sub, flag, value) for (prog, sub), flags in BAD.items()
             for flag, values in flags.items() for value in values]


@pytest.mark.parametrize(("prog", "sub", "flag", "value"), BAD_CASES,
                         ids=[f"{p}-{s}{f}={v}".replace("{tmp}/", "") for p, s, f, v in BAD_CASES])
def test_a_bad_flag_value_is_one_line_and_exit_2(
    prog: str, sub: str, flag: str, value: str, tmp_path: Path,
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Refused when the command line is parsed: before any work, nothing written."""
    main = _main(prog)
    monkeypatch.chdir(tmp_path)  # where a run would go by default
    tokens = [*([flag] if flag.startswith("-") else []), *value.split()]
    argv = [a.format(tmp=tmp_path) for a in (*BASE[(prog, sub)], *tokens)]
    try:
        code = main(argv)
    except SystemExit as e:
        code = e.code
    _, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert code == USAGE_ERROR and len(lines) == 1 and "Traceback" not in err, err
    name = flag.lstrip("-")
    assert lines[0].startswith(f"{prog}: error: "), err
    assert name in lines[0] or name.replace("-", "_") in lines[0] or flag == "values", err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("prog", ["crl-sim", "crl-train", "crl-export", "crl-run"])
def test_version(prog: str) -> None:
    """`--version` prints the command and the installed package's version, on any install
    (crl-train's without the train extra too)."""
    exe = Path(sys.executable).with_name(prog)
    if not exe.exists():
        pytest.skip(f"{exe} is not installed (not an installed venv)")
    r = subprocess.run([str(exe), "--version"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert r.stdout == f"{prog} {importlib.metadata.version('crl')}\n"


def test_printed_distances_carry_their_unit() -> None:
    from crl.train.cli import _summary_line

    line = _summary_line("reacher", {"success_rate": 1.0, "final_success_rate": 0.5,
                                     "time_at_goal": 12.0, "final_distance_median": 0.2066})
    assert "median final distance 20.66 cm" in line


@pytest.mark.parametrize(("evaluations", "says"), [
    (3, "mean of the last 3 evaluations (the paper's summary of a run; it takes the last 5, "
        "this run has 3): 2.0 steps"),
    (1, "mean of the last 1 evaluation (the paper's summary of a run; it takes the last 5, "
        "this run has 1): 1.0 steps"),
    (7, "mean of the last 5 evaluations (the paper's summary of a run): 5.0 steps"),
])
def test_the_paper_score_says_how_many_evaluations_it_averages(evaluations: int,
                                                               says: str) -> None:
    pytest.importorskip("jax", reason="crl.train.evaluate: the train extra")
    from crl.train.cli import _score_line

    rows = [{"train": {"time_at_goal": float(i + 1)}} for i in range(evaluations)]
    assert _score_line(rows).endswith(says)


def test_rollout_metrics_are_in_cm(capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("rich", reason="crl-sim's tables: the train extra")
    from crl.sim.cli import print_metrics

    episode = {"success": True, "time_at_goal": 3, "final_distance": 0.0123}
    print_metrics({"task": "reacher [test]", "episodes": [episode],
                   "summary": {"success_rate": 1.0, "time_at_goal": 3.0,
                               "time_at_goal_fraction": 0.1, "final_distance_mean": 0.0123}})
    out = capsys.readouterr().out
    assert "final distance (cm)" in out and "1.23" in out and "reacher [test]" in out
