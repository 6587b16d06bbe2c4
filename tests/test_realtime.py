"""The loop on a real computer.

Misses told apart by cause (`crl.runtime.loop.HeldOff`): a miss the computer caused, by keeping
the loop's thread off a core or waking it late, is counted in `misses_scheduling` beside
`misses`; a miss the tick's own work caused is not. The arithmetic runs on a scripted schedstat
file and CPU clock; then against the real kernel: a tick that computes past its deadline (its
own miss) and a tick whose thread a SCHED_FIFO process on the same core holds off (the
platform's miss).

The CPU wake-up latency request `--realtime` holds (`hold_wake_latency`): written as the kernel
reads it, kept for the process's life, refused in words.
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from crl.runtime import loop
from crl.runtime.controller import Stats
from crl.runtime.loop import FixedRateLoop, HeldOff, hold_wake_latency

PERIOD = 0.01


class Schedstat:
    """A stand-in for /proc/thread-self/schedstat: run time, run-queue delay (ns), slices."""

    def __init__(self, path: Path):
        self.path = path
        self.set(0.0)

    def set(self, delay_s: float) -> None:
        self.path.write_text(f"123456 {round(delay_s * 1e9)} 7\n")


@pytest.fixture
def scripted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[HeldOff, Schedstat, list]:
    stat = Schedstat(tmp_path / "schedstat")
    cpu = [0.0]
    monkeypatch.setattr("crl.runtime.loop.time.thread_time", lambda: cpu[0])
    return HeldOff(path=str(stat.path)), stat, cpu


def test_a_wait_on_the_run_queue_and_in_the_tick_add_up(scripted) -> None:
    held, stat, _ = scripted
    stat.set(1.0)
    held.waiting()
    stat.set(1.004)  # 4 ms waiting for a core after the sample came
    held.woke(now=50.0, due=50.0)
    stat.set(1.0065)  # and 2.5 ms more during the tick
    assert held.tick_done() == pytest.approx(0.0065)


def test_a_late_timer_counts_less_the_threads_own_cpu_time(scripted) -> None:
    held, _, cpu = scripted
    held.waiting()
    cpu[0] += 0.0002  # the wait's own polling
    held.woke(now=10.0035, due=10.0)  # woke 3.5 ms after the watchdog was due
    assert held.tick_done() == pytest.approx(0.0033)
    # Busy reading messages past the due time is the thread's own work, not the platform's.
    held.waiting()
    cpu[0] += 0.004
    held.woke(now=20.003, due=20.0)
    assert held.tick_done() == 0.0


def test_without_schedstat_or_on_another_clock_nothing_is_the_platforms(tmp_path: Path) -> None:
    missing = HeldOff(path=str(tmp_path / "absent"))
    off = HeldOff(enabled=False)
    for held in (missing, off):
        held.waiting()
        held.woke(now=5.0, due=4.0)
        assert held.run_delay() == 0.0 and held.tick_done() == 0.0
        held.close()
    garbage = tmp_path / "garbage"
    garbage.write_text("not numbers\n")
    assert HeldOff(path=str(garbage)).run_delay() == 0.0
    # A loop on a simulator's clock measures nothing (its seconds are not this computer's).
    sim = FixedRateLoop(PERIOD, Stats(), clock=lambda: 0.0)
    assert sim.held_off().tick_done() == 0.0


def test_a_miss_is_the_platforms_only_when_the_hold_explains_it() -> None:
    now = [100.0]
    stats = Stats()
    loop = FixedRateLoop(PERIOD, stats, clock=lambda: now[0])
    now[0] = 100.003  # 3 ms past the deadline
    assert loop.count_misses(100.0, held_off=0.004) == pytest.approx(100.0)
    assert stats.counts["misses"] == 1 and stats.counts["misses_scheduling"] == 1
    assert loop.count_misses(100.0, held_off=0.002) == pytest.approx(100.0)
    assert stats.counts["misses"] == 2 and stats.counts["misses_scheduling"] == 1
    now[0] = 100.025  # two whole periods passed as well: all three go one way
    loop.count_misses(100.0, held_off=0.030)
    assert stats.counts["misses"] == 5 and stats.counts["misses_scheduling"] == 4


def test_the_real_schedstat_is_this_threads() -> None:
    """The file is opened on the thread it measures; its delay only grows."""
    if not Path(HeldOff.SCHEDSTAT).exists():
        pytest.skip("the kernel has no per-thread schedstat (CONFIG_SCHED_INFO)")
    got: list[float] = []

    def body() -> None:
        held = HeldOff()
        got.append(held.run_delay())
        time.sleep(0.01)
        got.append(held.run_delay())
        held.close()

    t = threading.Thread(target=body)
    t.start()
    t.join()
    assert 0.0 <= got[0] <= got[1] < 0.01


def run_real_loop(on_tick) -> Stats:
    stats = Stats()
    loop = FixedRateLoop(PERIOD, stats, spin_s=0.0)
    loop.run(on_tick, threading.Event(), max_ticks=8)
    return stats


def test_a_tick_that_computes_past_its_deadline_is_its_own_miss() -> None:
    if not Path(HeldOff.SCHEDSTAT).exists():
        pytest.skip("the kernel has no per-thread schedstat (CONFIG_SCHED_INFO)")
    count = [0]

    def on_tick(deadline: float, now: float) -> None:
        count[0] += 1
        if count[0] == 3:
            end = time.thread_time() + 2.5 * PERIOD  # CPU time: the tick's own work
            while time.thread_time() < end:
                pass

    stats = run_real_loop(on_tick)
    assert stats.counts["misses"] >= 1
    # A core the test shares may hold the thread off too, but never as long as it computed.
    assert stats.counts["misses_scheduling"] < stats.counts["misses"]


HOG = """
import os, sys, time
os.sched_setaffinity(0, {int(sys.argv[1])})
os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(90))
sys.stdout.write("ready\\n"); sys.stdout.flush()
sys.stdin.readline()
end = time.monotonic() + float(sys.argv[2])
while time.monotonic() < end:
    pass
"""


def test_a_tick_held_off_its_core_is_the_platforms_miss() -> None:
    """A SCHED_FIFO process on the loop's core spins 3 periods from inside a tick: the loop's
    thread (normal priority) waits on the run queue, the tick ends periods late, and the miss
    is counted as the platform's."""
    if not Path(HeldOff.SCHEDSTAT).exists():
        pytest.skip("the kernel has no per-thread schedstat (CONFIG_SCHED_INFO)")
    cpu = min(os.sched_getaffinity(0))
    hog = subprocess.Popen([sys.executable, "-c", HOG, str(cpu), str(3 * PERIOD)],
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True)
    try:
        assert hog.stdout and hog.stdin and hog.stderr
        if hog.stdout.readline().strip() != "ready":
            hog.wait(10)
            pytest.skip(f"SCHED_FIFO refused here: {hog.stderr.read().strip()[-200:]}")
        result: list[Stats] = []
        count = [0]

        def on_tick(deadline: float, now: float) -> None:
            count[0] += 1
            if count[0] == 3:
                assert hog.stdin
                hog.stdin.write("go\n")
                hog.stdin.flush()
                time.sleep(0.001)  # the hog takes the core; this thread waits to run again

        def body() -> None:
            os.sched_setaffinity(0, {cpu})
            result.append(run_real_loop(on_tick))

        t = threading.Thread(target=body)
        t.start()
        t.join(10)
        assert result, "the loop did not finish"
        stats = result[0]
        assert stats.counts["misses"] >= 2
        assert stats.counts["misses_scheduling"] >= 2
    finally:
        hog.kill()
        hog.wait(10)


def test_the_wake_latency_request_is_written_once_and_kept(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loop, "_wake_latency", {})
    device = tmp_path / "cpu_dma_latency"
    device.write_bytes(b"")
    assert hold_wake_latency(str(device)) == "CPU wake-up latency held at 0 µs"
    assert device.read_bytes() == struct.pack("=i", 0)  # a native s32, as the kernel reads it
    assert hold_wake_latency(str(device)) == "CPU wake-up latency held at 0 µs"
    assert device.read_bytes() == struct.pack("=i", 0)  # not written again
    said = hold_wake_latency(str(tmp_path / "absent"))
    assert said.startswith("CPU wake-up latency request refused") and "idle CPUs may sleep" in said


_HOLD = """
import os, struct
from crl.runtime.loop import CPU_LATENCY_QOS, hold_wake_latency
said = hold_wake_latency()
fd = os.open(CPU_LATENCY_QOS, os.O_RDONLY)
print(said, "|", struct.unpack("=i", os.read(fd, 4))[0])
"""


def test_the_kernel_holds_the_request_while_the_process_runs() -> None:
    """On this computer's kernel: while held, the CPUs' latency target reads 0 µs."""
    if not os.access(loop.CPU_LATENCY_QOS, os.W_OK):
        pytest.skip(f"{loop.CPU_LATENCY_QOS} is not writable here (root or a udev rule)")
    out = subprocess.run([sys.executable, "-c", _HOLD], capture_output=True, text=True,
                         check=True, timeout=60).stdout.strip()
    assert out == "CPU wake-up latency held at 0 µs | 0", out


def test_the_wake_latency_bench_refuses_a_missing_policy_in_one_line(tmp_path: Path) -> None:
    """bench/wake_latency.py checks its policy before it starts a closed loop or a namespace."""
    bench = Path(__file__).resolve().parents[1] / "bench" / "wake_latency.py"
    out = tmp_path / "wake.json"
    r = subprocess.run([sys.executable, str(bench), "--policy", str(tmp_path / "absent.onnx"),
                        "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "absent.onnx" in r.stderr, r
    assert not out.exists()
