"""What a run and an evaluation show while they work.

`RunLogger`: a training run's console (a rich progress bar with the time elapsed, the compile
included; one line per evaluation) and its TensorBoard scalars. `Phases`: the
phase a longer command is in (`crl-train eval`: loading, compiling, evaluating, rendering) with a
spinner and the time since it began, on stderr, so the results on stdout stay as they are.
"""

from __future__ import annotations

import time
from pathlib import Path
from types import TracebackType
from typing import Any

from rich.progress import ProgressColumn, Task
from rich.text import Text

from crl.core.usage import CM_PER_M
from crl.train.config import TrainConfig


class _NullWriter:
    """TensorBoard's writer for the processes that write nothing."""

    def add_scalar(self, *args: Any, **kwargs: Any) -> None:
        pass

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


def clock(seconds: float | None) -> str:
    """m:ss, or h:mm:ss from an hour; "?" for a time not known yet."""
    if seconds is None:
        return "?"
    hours, rest = divmod(int(seconds), 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class ElapsedAndRemaining(ProgressColumn):
    """`elapsed<remaining`, as tqdm shows them: the time since the bar began (ticking while the
    programs compile) and the time left ("?" until there is a rate), in one narrow column."""

    def render(self, task: Task) -> Text:
        elapsed = task.finished_time if task.finished else task.elapsed
        return Text(f"{clock(elapsed)}<{clock(task.time_remaining)}", style="progress.elapsed")


class RunLogger:
    """Console progress bar and TensorBoard scalars of a training run.

    The bar starts before the programs compile (a minute on a CPU, shown as "compiling" with the
    time elapsed ticking), then counts env steps with the rates, the last evaluation's success,
    and the time elapsed and the time remaining (`ElapsedAndRemaining`).
    """

    def __init__(
        self, run_dir: Path, config: TrainConfig, env_steps: int, sgd_steps: int, show: bool,
        primary: bool = True,
    ) -> None:
        """Only the `primary` process of a multi-process run shows progress and writes events."""
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
        from tensorboardX import SummaryWriter

        self._writer: Any = (
            SummaryWriter(str(run_dir / "tb"), purge_step=env_steps or None) if primary
            else _NullWriter()
        )
        self._last = (time.monotonic(), env_steps, sgd_steps)
        self._progress = Progress(
            TextColumn(f"[bold]{config.task}[/] {{task.description}}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rates]}"),
            TextColumn("success {task.fields[success]}"),
            ElapsedAndRemaining(),
            disable=not (show and primary),
        )
        self._task = self._progress.add_task(
            "compiling", total=config.iterations * config.env_steps_per_iteration,
            completed=env_steps, rates="", success="-",
        )
        self._progress.start()

    def compiled(self, seconds: float) -> None:
        """Rates count from here; the console says how long the compile took."""
        _, env_steps, sgd_steps = self._last
        self._last = (time.monotonic(), env_steps, sgd_steps)
        self._progress.update(self._task, description="")
        self._progress.console.print(f"set up and compiled in {seconds:.1f} s", soft_wrap=True)

    def training(self, env_steps: int, sgd_steps: int, metrics: dict[str, Any]) -> None:
        now = time.monotonic()
        t, steps, sgd = self._last
        dt = max(now - t, 1e-9)
        sps, sgd_rate = (env_steps - steps) / dt, (sgd_steps - sgd) / dt
        self._last = (now, env_steps, sgd_steps)
        self._progress.update(
            self._task, completed=env_steps, rates=f"{sps:,.0f} SPS  {sgd_rate:,.0f} SGD/s"
        )
        w = self._writer
        w.add_scalar("perf/sps", sps, env_steps)
        w.add_scalar("perf/sgd_steps_per_s", sgd_rate, env_steps)
        if bool(metrics["trained"]):
            for name, value in metrics.items():
                if not name.startswith("finite/") and name != "trained":
                    w.add_scalar(f"train/{name}", float(value), env_steps)

    def evaluation(self, record: dict[str, Any]) -> None:
        for split in ("train", "held_out"):
            for name, value in record.get(split, {}).items():
                self._writer.add_scalar(f"eval_{split}/{name}", value, record["env_steps"])
        self._writer.flush()
        s = record["train"]
        self._progress.update(self._task, success=f"{s['success_rate']:.0%}")
        self._progress.console.print(
            f"eval @ {record['env_steps']:>11,} steps: success {s['success_rate']:6.1%}  "
            f"time at goal {s['time_at_goal']:7.1f}  median final distance "
            f"{s['final_distance_median'] * CM_PER_M:.2f} cm"
            + (f"  (held-out DR: success {record['held_out']['success_rate']:.1%})"
               if "held_out" in record else ""),
            soft_wrap=True,  # one line per evaluation, also in logs piped to a file
        )

    def learners(self, row: dict[str, Any]) -> None:
        """Each learner's figures beside the collector's (one console line per evaluation)."""
        names = [name for name in row if name.startswith("learner_")]
        for name in names:
            for split, figures in row[name].items():
                for key, value in figures.items():
                    self._writer.add_scalar(f"eval_{split}_{name}/{key}", value, row["env_steps"])
        self._writer.flush()
        self._progress.console.print(
            f"learners @ {row['env_steps']:>9,} steps: time at goal "
            + "  ".join(f"{name} {row[name]['train']['time_at_goal']:.1f}" for name in names),
            soft_wrap=True,
        )

    def close(self) -> None:
        self._progress.stop()
        self._writer.close()


class Phases:
    """A command's phases on stderr: a spinner, the phase it is in and the time since it began.

    Call it with each new phase's description (the hook `crl.train.evaluate.evaluate_run` and
    `crl.sim.render.render_rollout` take); as a context manager it shows them while open and
    leaves one line with the total time when closed, or nothing when an error ends it (a user's
    mistake is one line). On a console that is not a terminal (a log file) rich draws only that
    last line.
    """

    def __init__(self, title: str, show: bool = True) -> None:
        from rich.console import Console
        from rich.markup import escape
        from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        self._escape = escape
        # stdout is left alone (not redirected through the display): it carries the results.
        self._progress = Progress(
            SpinnerColumn(finished_text=" "),
            TextColumn(f"[bold]{escape(title)}[/] {{task.description}}"),
            TimeElapsedColumn(),
            console=Console(stderr=True), disable=not show, redirect_stdout=False,
        )
        self._task = self._progress.add_task("starting", total=1)

    def __call__(self, description: str) -> None:
        self._progress.update(self._task, description=self._escape(description))

    def __enter__(self) -> Phases:
        self._progress.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        if kind is None:
            self._progress.update(self._task, completed=1, description="done in")
            self._progress.stop()
        else:  # the error's one line says what happened: the display leaves nothing
            self._progress.update(self._task, visible=False)
            self._progress.live.transient = True
            self._progress.live.stop()  # (Progress.stop would end a log's line: an empty one)
