"""What the long commands show while they work, on stderr: `crl-run bench-loop`'s line (from the
loop's own status callback) and its platform baseline, `crl-train eval`'s phases, and the
training bar's compile phase with the time elapsed."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest

from crl.testbed.bench_loop import LoopProgress, platform_baseline


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def status(ticks: int) -> dict[str, float | int | str]:
    return {"ticks": ticks, "misses": 1, "period_error_p99_ms": 0.25}


def drive(progress: LoopProgress, clock: list[float], seconds: float) -> None:
    """The serve loop's status calls at 100 Hz: one every 25 ticks (0.25 s) from 100 s on."""
    for i in range(1, round(seconds * 4) + 1):
        clock[0] = 100.0 + (i - 1) * 0.25
        progress(status(25 * i))


def test_loop_progress_in_a_log_writes_a_line_every_ten_seconds_and_the_last() -> None:
    stream, clock = io.StringIO(), [0.0]
    progress = LoopProgress(100.0, 60.0, stream, clock=lambda: clock[0])
    progress.say("100 Hz for 60 s against a loopback robot; starting it")
    drive(progress, clock, 25.0)
    progress.close()
    progress.close()  # a second close adds nothing
    lines = stream.getvalue().splitlines()
    assert lines == [
        "bench-loop: 100 Hz for 60 s against a loopback robot; starting it",
        # elapsed counts from the first tick, 25 ticks before the first status
        "bench-loop: 0/60 s, 25 ticks, 1 missed, period error p99 0.250 ms",
        "bench-loop: 10/60 s, 1025 ticks, 1 missed, period error p99 0.250 ms",
        "bench-loop: 20/60 s, 2025 ticks, 1 missed, period error p99 0.250 ms",
        "bench-loop: 25/60 s, 2500 ticks, 1 missed, period error p99 0.250 ms",  # at close
    ]


def test_loop_progress_on_a_terminal_rewrites_its_line_every_second() -> None:
    stream, clock = Terminal(), [0.0]
    progress = LoopProgress(100.0, 3.0, stream, clock=lambda: clock[0])
    drive(progress, clock, 3.0)
    progress.final(status(310))  # serve's last status: the loop's end, shown at once
    progress.say("platform baseline")  # on a line of its own
    text = stream.getvalue()
    shown = [part for part in text.split("\r") if part]
    assert [s.split(" ticks")[0] for s in shown] == [
        "bench-loop: 0/3 s, 25", "bench-loop: 1/3 s, 125", "bench-loop: 2/3 s, 225",
        "bench-loop: 3/3 s, 310"]
    assert all(s.endswith("ms\x1b[K") for s in shown[:-1])
    assert shown[-1].endswith("ms\x1b[K\nbench-loop: platform baseline\n")


def test_platform_baseline_times_empty_ticks() -> None:
    b = platform_baseline(200.0, 0.1, 0.0005)
    assert (b["hz"], b["seconds"], b["ticks"], b["spin_s"]) == (200.0, 0.1, 20, 0.0005)
    assert len(b["period_error_samples_ms"]) == 20 and b["misses"] >= 0
    assert min(b["period_error_samples_ms"]) >= 0  # it spins to each deadline: never early
    assert b["period_error_ms"]["max"] == pytest.approx(max(b["period_error_samples_ms"]),
                                                        abs=1e-4)


def test_phases_show_on_stderr_and_leave_stdout_alone(capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("rich", reason="the train extra")
    from crl.train.progress import Phases

    with Phases("crl-train eval") as progress:
        progress("loading /tmp/[run]")  # brackets are text, not rich markup
        print('{"result": 1}')
        progress("evaluating 16 episodes")
    captured = capsys.readouterr()
    assert captured.out == '{"result": 1}\n'
    assert re.fullmatch(r"\s*crl-train eval done in 0:00:0\d\n", captured.err), captured.err
    with pytest.raises(RuntimeError), Phases("crl-train eval") as progress:
        progress("compiling the evaluator")
        raise RuntimeError("boom")
    assert capsys.readouterr() == ("", "")  # an error's own line is all a user reads


def test_training_bar_shows_the_time_elapsed_while_it_compiles(tmp_path: Path) -> None:
    pytest.importorskip("tensorboardX", reason="the train extra")
    from rich.console import Console

    from crl.train.config import preset
    from crl.train.progress import RunLogger

    config = preset("quick", "reacher")
    logger = RunLogger(tmp_path, config, 0, 0, show=False)
    try:
        bar = logger._progress
        console = Console(record=True, width=200, file=io.StringIO())
        console.print(bar.make_tasks_table(bar.tasks))
        text = console.export_text()
        # elapsed<remaining: the time since the bar began, none left to tell yet
        assert re.search(r"^reacher compiling .* 0:0\d<\?$", text.strip()), text
        logger.compiled(12.0)
        console.print(bar.make_tasks_table(bar.tasks))
        assert "compiling" not in console.export_text()
    finally:
        logger.close()


def test_clock() -> None:
    pytest.importorskip("rich", reason="the train extra")
    from crl.train.progress import clock

    assert [clock(s) for s in (None, 0, 59.9, 65, 3599, 3725)] == [
        "?", "0:00", "0:59", "1:05", "59:59", "1:02:05"]
