"""The control loops: a fixed-rate loop on the monotonic clock with absolute deadlines, and a
loop locked to the robot's samples.

Deadline k is `start + k · period`, never "last wake-up + period", so errors do not accumulate
into drift. A tick whose work ends after the next deadline is a miss; when whole periods have
gone by, their deadlines are skipped (each counted as a miss) instead of run back to back in a
burst: a controller that is late must act on fresh data once, not catch up several times.

The wait sleeps until shortly before the deadline and spins the rest (`spin_s`): the kernel's
sleep overshoots by tens to hundreds of microseconds, more on a busy machine, and a robot's
control loop can afford a fraction of a core to remove it. `spin_s=0` sleeps all the way.

A miss is also told apart by its cause: `misses_scheduling` counts those the loop's thread would
not have had if the computer had run it when it could (`HeldOff`): it waited for a core, or its
timer woke it late, at least as long as the tick overran. The rest are the loop's own (its work
took too long). Either way the miss is counted in `misses`.

A loop can also run on a clock that is not this computer's: a simulator's (ROS `/clock` under
`use_sim_time`), which may run at any pace and steps back when the simulation resets. The loop
then reads it every `max_sleep_s` of real time instead of sleeping a whole wait, and reads it
through a `SteppedClock`, which never goes back, so a reset neither stalls the grid nor ages
what the controller holds.
"""

from __future__ import annotations

import gc
import math
import os
import resource
import struct
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple, Protocol, TypeVar

from crl.core.latency import percentile

if TYPE_CHECKING:  # the controller times its policy call with `FixedWork`, from here
    from crl.runtime.controller import Stats

Clock = Callable[[], float]
L = TypeVar("L")
DEFAULT_SPIN_S = 0.0005
# How often (real seconds) a loop on a simulator's clock reads it while it waits: a tenth of a
# 100 Hz period, so a tick is late by at most that in real time, whatever the simulator's pace.
SIM_CLOCK_POLL_S = 0.001


class SteppedClock:
    """A clock that may step back (a simulator's, reset), seen as one that never does: a step
    back is taken out, so this view stands still at the step and goes on from there at the
    clock's pace. Read from any thread."""

    def __init__(self, clock: Clock):
        self.clock = clock
        self._lock = threading.Lock()
        self._offset = 0.0
        self._last = -math.inf
        self.steps_back = 0

    def __call__(self) -> float:
        with self._lock:
            now = self.clock() + self._offset
            if now < self._last:
                self._offset += self._last - now
                self.steps_back += 1
                now = self._last
            self._last = now
            return now


class Reading(NamedTuple):
    """A thread's counters at one moment: its run-queue delay (None: unreadable), the process's
    CPU time and the thread's (s), the monotonic clock, and how many times the thread has
    blocked (its voluntary context switches; -1: unreadable)."""

    delay: float | None
    process: float
    thread: float
    wall: float = 0.0
    blocks: int = -1

    def others_since(self, before: Reading) -> float:
        """CPU time the process's other threads used since `before`."""
        return max(0.0, (self.process - before.process) - (self.thread - before.thread))

    def unseen_since(self, before: Reading) -> float:
        """Time since `before` that the thread, never blocking, spent neither on its own CPU
        clock nor on a run queue: its virtual CPU was running something else on the host
        (steal; a kernel with paravirtual time accounting takes it off the thread's CPU time),
        or, on a kernel that accounts interrupt time apart, handling interrupts. 0 if it
        blocked (that wait may be its own: a lock, a page read in) or a counter is unreadable."""
        if (self.blocks < 0 or self.blocks != before.blocks or self.delay is None
                or before.delay is None):
            return 0.0
        return max(0.0, (self.wall - before.wall) - (self.thread - before.thread)
                   - (self.delay - before.delay))


class TickParts(NamedTuple):
    """Where one tick's time went, as `HeldOff` measured it (s): what a miss's record shows, so
    a miss counted as the loop's own can be traced to its part.

    `woke_late`: how late its timed wait ended after it was due, with any stall before the
    count; `queued_before` / `queued_in_tick`: run-queue delay after the wake-up and during the
    work; `unseen`: work time on neither the thread's CPU clock nor a run queue (steal; 0 if it
    blocked); `slowed`: fixed work's CPU beyond its usual (`FixedWork`); `work` / `work_cpu`:
    the work's wall and thread-CPU time; `fixed_cpu`: the fixed work's CPU (the policy call);
    `blocked`: the work blocked (then nothing unseen is excused); `timed`: the wait ended on a
    timer (a deadline, a watchdog), not on a sample; `began` / `woke`: when the wait began and
    ended, from when the tick was due (a wait that began after it: the tick before overran);
    `wait_cpu` / `wait_others_cpu`: the thread's CPU in the wait (reading messages) and the
    process's other threads' meanwhile (its I/O threads), both taken off a late wake-up;
    `after_done`: the platform's hold between the work's end and the miss's count
    (`HeldOff.since_done`)."""

    woke_late: float = 0.0
    queued_before: float = 0.0
    queued_in_tick: float = 0.0
    unseen: float = 0.0
    slowed: float = 0.0
    work: float = 0.0
    work_cpu: float = 0.0
    fixed_cpu: float = 0.0
    blocked: bool = False
    timed: bool = True
    began: float = 0.0
    woke: float = 0.0
    wait_cpu: float = 0.0
    wait_others_cpu: float = 0.0
    after_done: float = 0.0


def voluntary_switches() -> int:
    """How many times the calling thread has blocked (-1 where the OS does not say)."""
    try:
        return resource.getrusage(resource.RUSAGE_THREAD).ru_nvcsw
    except (AttributeError, OSError):
        return -1


def _queued_since(at: Reading, before: Reading) -> float:
    """The thread's run-queue delay between two readings, less the CPU the process's other
    threads used meanwhile (0 where a delay is unreadable)."""
    if at.delay is None or before.delay is None:
        return 0.0
    return max(0.0, at.delay - before.delay - at.others_since(before))


class HeldOff:
    """How long the computer kept the calling thread from running when its tick could have run:
    the part of a tick's lateness that is the platform's, not the loop's own.

    Two things hold a control thread off: waiting for a core while it could run (another task
    of equal or higher priority, a kernel path that does not yield on a non-preemptible kernel, a
    virtual CPU the hypervisor has not scheduled: measured at 3-6 ms several times a minute on a
    2-core VM), and a timer that wakes it late (a halted virtual CPU, a deep idle state). Per
    tick it counts, from the moment the tick could first have fired (`earliest`: its deadline,
    its window's start; never before the wait began, so a tick that starts late because the one
    before overran is not held off), the longer of: how late a timed wait ended after it was
    due, less the process's CPU since the wait last blocked (what it read or ran before that
    block cannot have kept it past a timer set after), and any stall between the wake-up and
    this count (a few µs of the loop's own code);
    and the kernel's run-queue delay for the thread (Linux schedstat, read with `pread`)
    since its last blocking call began (`before_blocking`: the delay after whatever woke it, not
    that of earlier wake-ups the wait absorbed). Then, during the tick's work, the run-queue
    delay, and, if the work never blocked, the time the thread was neither on its CPU clock nor
    queued (`Reading.unseen_since`: a hypervisor that ran something else on its virtual CPU,
    measured at 9 ms in one 100 Hz tick on a 2-core VM). The process's own CPU time over each
    span (this thread's, and its other threads': a transport's I/O thread that preempts the loop
    by design, an interpreter lock another thread holds) is taken off first: that is the
    runtime's own. What it cannot see counts as the loop's own: time the hypervisor takes in a
    tick that blocked, any read that fails. Where the
    kernel keeps no per-thread schedstat, or the loop runs on a clock that is not this
    computer's (a simulator's), it reports 0. Open it on the thread it measures; it stands in
    for the thread's previous one until closed."""

    SCHEDSTAT = "/proc/thread-self/schedstat"

    def __init__(self, enabled: bool = True, path: str = SCHEDSTAT):
        self._fd: int | None = None
        if enabled:
            try:
                self._fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                self._fd = None
        self._began = 0.0  # when the wait began
        self._at_wait = Reading(None, 0.0, 0.0)
        self._at_block = Reading(None, 0.0, 0.0)  # when it last blocked
        self._at_wake = Reading(None, 0.0, 0.0)
        self._held = 0.0  # the wait's share, once it ended
        self._late = self._queued = 0.0  # its parts: a timer's lateness (and stall), queued
        self._timed = True
        self._wait = (0.0, 0.0, 0.0, 0.0)  # its parts: began and woke from due, CPU, others'
        self._slowed = 0.0  # the tick's fixed work beyond its usual CPU time (`FixedWork`)
        self._fixed = 0.0  # the tick's fixed work's CPU time
        self.parts = TickParts()  # the last tick's, once `tick_done` measured it
        self._at_done = Reading(None, 0.0, 0.0)  # when `tick_done` read the counters
        self._previous = getattr(_this_thread, "held_off", None)
        if self._fd is not None:
            _this_thread.held_off = self

    def run_delay(self) -> float | None:
        """The thread's run-queue delay so far (s); None where it cannot be read."""
        if self._fd is None:
            return None
        try:
            return int(os.pread(self._fd, 64, 0).split()[1]) * 1e-9
        except (OSError, ValueError, IndexError):
            return None

    def reading(self) -> Reading:
        return Reading(self.run_delay(), time.process_time(), time.thread_time(),
                       time.monotonic(), voluntary_switches())

    def waiting(self) -> None:
        """The loop begins to wait for its next tick."""
        if self._fd is not None:
            self._began = time.monotonic()
            self._at_wait = self._at_block = self.reading()

    def blocking(self) -> None:
        """The thread is about to block in its wait (see `before_blocking`)."""
        self._at_block = self.reading()

    def woke(self, now: float, due: float, earliest: float, timed: bool = True) -> None:
        """The wait ended at `now` (the loop's clock, this computer's); the tick was due at
        `due` and could have fired from `earliest` on (≤ due). `timed`: the wait ended on a
        timer (a deadline, a watchdog); not when a sample woke it, whose arrival time another
        thread may have taken before its own work (a ROS callback's), which is not a hold."""
        if self._fd is None:
            return
        at = self._at_wake = self.reading()
        # The process's CPU since the wait last blocked: what can have kept the wake-up past
        # `due` (a read that ran on past it). What it read before that block ended before the
        # block began, so it did not (measured in the soak: a wait that read a flood's bad
        # observations for 3.6 ms over 18 ms, asleep on its watchdog, woke 6.7 ms past it).
        used = at.process - self._at_block.process
        late = max(0.0, now - max(due, self._began) - used) if timed else 0.0
        # From reading the clock to reading the counters the thread runs a few µs of its own:
        # longer, and the platform took the time (less any the process's other threads used
        # since the thread blocked: one may have held the interpreter's lock).
        stalled = max(0.0, at.wall - now - at.others_since(self._at_block))
        queued = min(_queued_since(at, self._at_block), at.wall - max(earliest, self._began) - used)
        self._held = max(late + stalled, queued, 0.0)
        self._late, self._queued, self._timed = late + stalled, max(queued, 0.0), timed
        self._wait = (self._began - due, now - due, at.thread - self._at_wait.thread,
                      at.others_since(self._at_wait))
        self._slowed = self._fixed = 0.0

    def slowed(self, excess: float) -> None:
        """The tick's fixed work (`FixedWork`) took `excess` s of CPU beyond its usual: the
        computer ran it slower, not the loop's own doing."""
        self._slowed += max(0.0, excess)

    def fixed_work(self, cpu: float) -> None:
        """The tick's fixed work (`FixedWork`) took `cpu` s of the thread's CPU (for the
        tick's `parts`)."""
        self._fixed += cpu

    def tick_done(self) -> float:
        """The tick's work is done: how long the platform held the thread off since the tick
        could have fired (s). Its parts are kept in `parts`."""
        if self._fd is None:
            return 0.0
        at = self._at_done = self.reading()
        woke = self._at_wake
        in_tick = _queued_since(at, woke)
        unseen = at.unseen_since(woke)
        self.parts = TickParts(
            self._late, self._queued, in_tick, unseen, self._slowed, at.wall - woke.wall,
            at.thread - woke.thread, self._fixed,
            woke.blocks < 0 or at.blocks != woke.blocks, self._timed, *self._wait)
        return self._held + in_tick + unseen + self._slowed

    def since_done(self) -> float:
        """The platform's hold since `tick_done` read the counters (s): run-queue delay and time
        the thread was on neither clock. Only a few µs of the loop's own code run between, so
        a tick found late is checked again for a stall there (measured in the soak: 9.4 ms
        between a 2 ms tick's end and its count, counted its own)."""
        if self._fd is None:
            return 0.0
        at, done = self.reading(), self._at_done
        return _queued_since(at, done) + at.unseen_since(done)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
            if getattr(_this_thread, "held_off", None) is self:
                _this_thread.held_off = self._previous

    def __enter__(self) -> HeldOff:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_this_thread = threading.local()  # the calling thread's open HeldOff, if its loop keeps one


def before_blocking() -> None:
    """A loop's wait calls this before each blocking call (a sleep, a socket poll, a condition
    wait): the thread's `HeldOff` then counts only the run-queue delay after this block ends,
    not that of earlier wake-ups (a poll's timeout, a bad message) the wait absorbed."""
    held_off = getattr(_this_thread, "held_off", None)
    if held_off is not None:
        held_off.blocking()


# A tick's fixed work that takes more than this many times its usual CPU time ran on a slowed
# computer (`FixedWork`); its usual is the median of its last USUAL_CALLS calls, taken again every
# USUAL_EVERY calls (a sort of a few hundred floats, not each tick).
SLOWED_FACTOR = 2.0
USUAL_CALLS = 256
USUAL_EVERY = 32


class FixedWork:
    """Times a piece of a tick's work that is the same every tick on the thread's CPU clock: a
    policy's call (one graph, the same shapes, one thread, no allocation after its first).

    Its CPU time then varies only with how fast the computer runs it. On a shared VM it does so
    a lot: measured on a 2-core VM, the depth-64 policy's call took 5-12 ms of the thread's CPU
    now and then where it takes 1.5-2 ms, with no page fault, no context switch and every other
    part of the tick as slow (its 16 MB of weights evicted or its core's caches shared with
    another guest; the same VM ran a 16 MB matrix-vector product in 0.64 ms, and in 3 ms once
    it had not touched it for 0.1 s). A call over SLOWED_FACTOR times its usual reports its CPU
    time beyond the usual to the thread's `HeldOff` as the platform's (`slowed`: counted).
    Only the call's excess: the rest of the tick, as slowed, stays the loop's own."""

    def __init__(self) -> None:
        self.recent: deque[float] = deque(maxlen=USUAL_CALLS)
        self.usual: float | None = None  # None until USUAL_EVERY calls were timed
        self.calls = 0
        self.slowed = 0  # calls over SLOWED_FACTOR times the usual
        self._t0 = 0.0

    def start(self) -> None:
        self._t0 = time.thread_time()

    def done(self) -> float:
        """The call has ended: its CPU time (s)."""
        used = time.thread_time() - self._t0
        held_off = getattr(_this_thread, "held_off", None)
        if held_off is not None:
            held_off.fixed_work(used)
        if self.usual is not None and used > SLOWED_FACTOR * self.usual:
            self.slowed += 1
            if held_off is not None:
                held_off.slowed(used - self.usual)
        self.recent.append(used)
        self.calls += 1
        if self.calls % USUAL_EVERY == 0:
            self.usual = percentile(self.recent, 50)
        return used


REALTIME_PRIORITY = 50
CPU_LATENCY_QOS = "/dev/cpu_dma_latency"
# Per device path: what holding it said, and the descriptor that holds it (None if refused).
_wake_latency: dict[str, tuple[str, int | None]] = {}


def hold_wake_latency(path: str = CPU_LATENCY_QOS) -> str:
    """Ask the kernel to keep every CPU able to wake at once, for the rest of this process
    (Linux's CPU latency QoS at 0 µs, as cyclictest does): idle CPUs then poll instead of
    entering sleep states, whose exit delays the wake-up of a thread that waits for its
    observation (a deep C-state: tens to hundreds of µs; a virtual machine's halted CPU: up to
    milliseconds). Measured on a 2-core VM, the reacher's closed loop at 25 Hz: robot-measured
    p99 4.04-4.76 ms without, 3.23-3.44 ms with (bench/wake_latency.py). Idle cores then spin:
    more power. The kernel drops the request when its descriptor closes: when the process ends
    (and any child it forked without exec), however it ends. Returns what happened, in words; a
    second call keeps the first request."""
    if path not in _wake_latency:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        except OSError as e:
            _wake_latency[path] = (f"CPU wake-up latency request refused ({e.strerror}: "
                                   f"{path}; it needs write access to that device, as root "
                                   "or by a udev rule); idle CPUs may sleep", None)
        else:
            try:
                os.write(fd, struct.pack("=i", 0))
            except OSError as e:
                os.close(fd)
                _wake_latency[path] = (f"CPU wake-up latency request refused ({e.strerror})",
                                       None)
            else:  # the descriptor stays open: the request lasts as long as it does
                _wake_latency[path] = ("CPU wake-up latency held at 0 µs", fd)
    return _wake_latency[path][0]


def set_realtime(priority: int = REALTIME_PRIORITY) -> str:
    """Ask for SCHED_FIFO for the calling thread and the threads it starts from now on (Linux,
    needs CAP_SYS_NICE or rtprio limits); returns what happened, in words, so a caller can
    print it."""
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(priority))
    except (AttributeError, PermissionError, OSError) as e:
        return f"real-time scheduling refused ({e}); running with normal priority"
    return f"running with SCHED_FIFO priority {priority}"


def open_realtime(open_link: Callable[[], L], priority: int = REALTIME_PRIORITY) -> tuple[L, str]:
    """Open a transport whose I/O threads run one SCHED_FIFO level above the control loop, and
    hold the CPUs' wake-up latency at 0 (`hold_wake_latency`).

    ZMQ's I/O thread starts with the first socket and inherits the scheduling of the thread
    that starts it. SCHED_FIFO does not time-slice: at the loop's own level that thread would
    wait while the loop spins for its deadline, and on a 2-core computer whose other core is
    busy the observation the tick needs would arrive just after it (measured: at 500 Hz the
    ticks then acted on observations a period old, and stale stops followed). One level above,
    it preempts the spin to deliver.
    """
    said = set_realtime(priority + 1)
    link = open_link()
    if said.startswith("running"):
        said = set_realtime(priority) + f" (its transport's I/O threads {priority + 1})"
    return link, f"{said}; {hold_wake_latency()}"


# Work a loop does every few ticks for people and monitors (a status, diagnostics, markers) waits
# for a tick that leaves this share of a period before the next is due: a tick that began at its
# watchdog, or had a slow policy call, has less. The next tick's action is for the robot.
SPARE_SHARE = 0.5


class SpareTime:
    """Decides on which tick to do work that is due every `every` ticks: the first, from when it
    falls due, that leaves SPARE_SHARE of a period to spare, and never more than `every` ticks
    late (a loop that never has time to spare still reports, at half the rate)."""

    def __init__(self, every: int, period: float, clock: Clock = time.monotonic):
        if every < 1:
            raise ValueError(f"every: must be at least 1 tick, got {every}")
        self.every, self.period, self.clock = every, period, clock
        self.due_since: int | None = None  # the tick it fell due at, while it waits

    def now(self, ticks: int, deadline: float) -> bool:
        """Whether to do it on this tick: `ticks` ticks so far, this one's `deadline` on the
        loop's clock (the next is due a period after it)."""
        if self.due_since is None and ticks % self.every == 0:
            self.due_since = ticks
        if self.due_since is None:
            return False
        spare = deadline + self.period - self.clock()
        if spare >= SPARE_SHARE * self.period or ticks - self.due_since >= self.every:
            self.due_since = None
            return True
        return False


class FixedRateLoop:
    """Calls `on_tick(deadline, now)` once per period until `stop` is set."""

    def __init__(self, period: float, stats: Stats, *, clock: Clock = time.monotonic,
                 spin_s: float = DEFAULT_SPIN_S, max_sleep_s: float = math.inf):
        """`max_sleep_s`: the longest real sleep between two readings of `clock` (finite for a
        clock that is not this computer's, e.g. SIM_CLOCK_POLL_S)."""
        if not (math.isfinite(period) and period > 0):
            raise ValueError(f"period: must be positive, got {period}")
        if not max_sleep_s > 0:
            raise ValueError(f"max_sleep_s: must be positive, got {max_sleep_s}")
        self.period, self.stats, self.clock = period, stats, clock
        self.spin_s, self.max_sleep_s = max(0.0, spin_s), max_sleep_s

    def wait_until(self, deadline: float) -> float:
        """Sleep, then spin, until `deadline`; returns the time woken."""
        while (remaining := deadline - self.clock() - self.spin_s) > 0:
            before_blocking()
            time.sleep(min(remaining, self.max_sleep_s))
        now = self.clock()
        while now < deadline:
            now = self.clock()
        return now

    def run(self, on_tick: Callable[[float, float], None], stop: threading.Event,
            start: float | None = None, max_ticks: int | None = None) -> None:
        """Run until `stop` is set (or `max_ticks`); the first deadline is `start` (now)."""
        # Collections of the young generation happen at allocation counts, i.e. mid-tick:
        # freeze what setup allocated so the collector has less to walk when it does run.
        gc.collect()
        gc.freeze()
        now = self.clock()
        deadline = now if start is None else start
        if deadline < now:  # setup outlasted the given start: begin on the next deadline
            deadline += math.ceil((now - deadline) / self.period) * self.period
        ticks = 0
        with self.held_off() as held_off:
            while not stop.is_set() and (max_ticks is None or ticks < max_ticks):
                held_off.waiting()
                now = self.wait_until(deadline)
                held_off.woke(now, deadline, deadline)
                self.stats.period_error.add(now - deadline)
                on_tick(deadline, now)
                ticks += 1
                deadline = self.count_misses(deadline + self.period, held_off.tick_done(),
                                             held_off.parts, held_off.since_done)

    def held_off(self) -> HeldOff:
        """The thread's `HeldOff`, opened on the loop's thread; measured only on this
        computer's clock."""
        return HeldOff(enabled=self.clock is time.monotonic)

    def count_misses(self, deadline: float, held_off: float = 0.0,
                     parts: TickParts | None = None,
                     since_done: Callable[[], float] | None = None) -> float:
        """The next deadline, counting a miss when this tick's work ended after it: then the
        whole periods gone are skipped (each a miss too), not run back to back in a burst.
        `held_off`: how long the platform kept the thread from running since its tick could
        first fire (`HeldOff`), and `since_done`, read for a tick found late, its hold since
        (`HeldOff.since_done`); the misses they explain (the tick would not have had them
        without it) are also counted in `misses_scheduling`. Each missing tick is recorded
        with its parts (`Stats.log_miss`)."""
        late = self.clock() - deadline
        if late >= 0:
            if since_done is not None:
                after = since_done()
                held_off += after
                parts = (parts or TickParts())._replace(after_done=after)
            behind = int(late // self.period)
            self.stats.counts["misses"] += 1 + behind
            # Without the hold the tick would have ended `held_off` sooner: the misses it would
            # still have had are the loop's own, the rest the platform's.
            own = 0 if late < held_off else 1 + int((late - held_off) // self.period)
            self.stats.counts["misses_scheduling"] += 1 + behind - own
            self.stats.log_miss(late, 1 + behind, own, held_off, parts or TickParts())
            deadline += behind * self.period
        return deadline


# The sample-locked loop (`SampleLockedLoop`). A tick may fire this far (a fraction of a period)
# before or after the sample it expects: outside it, it is another period's sample. Wide, so a
# robot's late sample (its computer stalled a few ms) is waited for rather than slipped past:
# measured at 100 Hz on a 2-core VM, a quarter period slipped one sample in 1,300-3,700 ticks.
WINDOW = 0.4
# Share of a sample's arrival error the next expected time takes up (the phase), and the share
# that goes into the period estimate (the robot's rate).
PHASE_GAIN = 0.25
RATE_GAIN = 0.02
# How far from the nominal period one tick's step may go: a robot's rate is followed within this
# (crystals differ by 100 ppm; a robot 5% off its nominal rate is misconfigured, and its samples
# then slip past the ticks, counted), and a restarted robot's new phase is caught up at this pace
# (half a period in about ten ticks).
MAX_FOLLOW = 0.05
# The loop locks when the robot sends one sample a period: over the last LOCK_TICKS ticks, the
# samples a tick took average within LOCK_BAND of 1. A robot that sends several samples a period
# (a 500 Hz joint-state stream under a 50 Hz policy), none, or a flood, has no phase to follow:
# the loop then runs on its own fixed grid.
LOCK_TICKS = 16
LOCK_BAND = 0.25


class Samples(Protocol):
    """The robot's samples as the loop sees them: how many usable ones have come so far, a wait
    for the next one, and a mark that a tick has acted on the newest."""

    @property
    def count(self) -> int: ...

    def wait(self, until: float) -> float | None:
        """Block until a usable sample comes that neither `wait` reported nor a tick acted on,
        or until `until` (the loop's clock; one already past: take what came, without waiting);
        the newest such sample's arrival time, or None. `count` then includes it."""
        ...

    def acted(self) -> None:
        """A tick has just acted on the newest sample there is."""
        ...


class ArrivalSignal:
    """`Samples` handed over by another thread: `note` each usable sample as it is taken (a ROS
    subscription callback), the loop's thread `wait`s for them."""

    def __init__(self, clock: Clock = time.monotonic, max_sleep_s: float = math.inf):
        self.clock, self.max_sleep_s = clock, max_sleep_s  # as FixedRateLoop's
        self._cond = threading.Condition()
        self._count = 0
        self._reported = 0
        self._last = math.nan

    @property
    def count(self) -> int:
        return self._count

    def note(self, arrival: float) -> None:
        with self._cond:
            self._count += 1
            self._last = arrival
            self._cond.notify_all()

    def wait(self, until: float) -> float | None:
        with self._cond:
            while self._count == self._reported:
                remaining = until - self.clock()
                if remaining <= 0:
                    return None
                before_blocking()
                self._cond.wait(min(remaining, self.max_sleep_s))
            self._reported = self._count
            return self._last

    def acted(self) -> None:
        with self._cond:
            self._reported = self._count


class SampleLockedLoop(FixedRateLoop):
    """Ticks locked to the robot's samples: each tick fires as its sample arrives.

    A robot's clock is not this computer's: two crystals 100 ppm apart drift 6 ms a minute, so a
    loop whose phase is set once ends up acting on samples up to a period old, then skips or
    repeats one. This loop expects each sample at a time on a grid it keeps in step with the
    arrivals (a phase-locked loop: each arrival's error moves the grid's phase by PHASE_GAIN of
    it and its period by RATE_GAIN, together at most MAX_FOLLOW of a period a tick). A tick fires
    when its sample arrives within WINDOW of the expected time, at the window's start for one
    that came early, and at its end (the watchdog) for one that has not come: the loop never
    waits on the robot longer than that, so the staleness limit and the safe action still fire
    on this computer's clock when samples stop. Ticks that took no new sample (`samples_repeated`)
    and samples never acted on (`samples_skipped`) are counted. While the robot does not send
    one sample a period (see LOCK_TICKS), the loop runs on its own fixed grid, as
    `FixedRateLoop` does.
    """

    def __init__(self, period: float, stats: Stats, samples: Samples, *,
                 clock: Clock = time.monotonic, spin_s: float = DEFAULT_SPIN_S,
                 max_sleep_s: float = math.inf):
        super().__init__(period, stats, clock=clock, spin_s=spin_s, max_sleep_s=max_sleep_s)
        self.samples = samples
        self.window = WINDOW * period
        self.rate_period = period  # the robot's period as the loop estimates it
        # Samples each recent tick took; a robot is first taken to send one a period (most do),
        # so the first ticks already wait for its samples.
        self.taken: deque[int] = deque([1] * LOCK_TICKS, maxlen=LOCK_TICKS)

    @property
    def locked(self) -> bool:
        return abs(sum(self.taken) / LOCK_TICKS - 1.0) <= LOCK_BAND

    def phase_error(self, arrival: float, expected: float) -> float:
        """How far a sample came from the grid, to its nearest point: within half a period."""
        return (arrival - expected + self.period / 2) % self.period - self.period / 2

    def wait_sample(self, expected: float) -> tuple[float, float, float | None, bool]:
        """Wait for the sample expected at `expected`: (the time woken, when the tick was due,
        the arrival the grid follows, or None, whether the wait ended on a timer, or past one,
        rather than on a sample's arrival). A tick is due at its sample's arrival, at the
        window's start for a sample that came early (the robot's phase is ahead of the grid),
        and at the window's end (the watchdog) when none came; it can fire from the window's
        start on. A sample before the window that is nearer the previous point than this one
        was that point's, late (after its watchdog): the tick still waits for its own, and if
        none comes, the grid follows the late one."""
        opens, closes = expected - self.window, expected + self.window
        late = None
        # One wait to the watchdog, not one to the window's start first: only the watchdog
        # needs a punctual wake-up, and a sample wakes the wait whenever it comes.
        while (arrival := self.samples.wait(closes)) is not None:
            if arrival >= opens:  # due on arrival. One that came after the watchdog was due
                # at the watchdog, and its wait ended that late on a timer: a tick that overran
                # past it and finds the sample pending (the wait began late: no hold), or a
                # wake-up the platform held past it while the sample came
                return self.clock(), min(arrival, closes), arrival, arrival > closes
            if self.phase_error(arrival, expected) < 0:
                slept = self.clock() < opens  # in hand before the window: a timed wait
                return self.wait_until(opens), opens, arrival, slept
            late = arrival
            # Taking that sample ran past the watchdog: its tick, now. Another wait, already
            # due, would read all that is queued (a flood's: measured 2.8 ms past the watchdog
            # with 5.8 ms of reading, and the tick ended past the next sample).
            if self.clock() >= closes:
                break
        return self.clock(), closes, late, True

    def next_expected(self, expected: float, arrival: float | None) -> float:
        """The grid's next point: a period on, moved toward where this sample arrived. The
        error is taken to the nearest point of the grid: a sample that came after the previous
        tick's watchdog is late for that tick, not most of a period early for this one."""
        if arrival is None:
            return expected + self.rate_period
        error = min(max(self.phase_error(arrival, expected), -self.window), self.window)
        limit = MAX_FOLLOW * self.period
        self.rate_period = min(max(self.rate_period + RATE_GAIN * error, self.period - limit),
                               self.period + limit)
        step = self.rate_period + PHASE_GAIN * error
        return expected + min(max(step, self.period - limit), self.period + limit)

    def run(self, on_tick: Callable[[float, float], None], stop: threading.Event,
            start: float | None = None, max_ticks: int | None = None) -> None:
        """Run until `stop` is set (or `max_ticks`); `start`: when the first sample is expected
        (the first observation's arrival plus a period; one already past moves on by whole
        periods, as a setup that outlasted it would have it)."""
        gc.collect()
        gc.freeze()
        now = self.clock()
        expected = now if start is None else start
        if expected < now:
            expected += math.ceil((now - expected) / self.period) * self.period
        self.samples.wait(now)  # what came during the setup: the first tick acts on it
        with self.held_off() as held_off:
            self._run(on_tick, stop, max_ticks, expected, held_off)

    def _run(self, on_tick: Callable[[float, float], None], stop: threading.Event,
             max_ticks: int | None, expected: float, held_off: HeldOff) -> None:
        counts = self.stats.counts
        ticks, counted = 0, self.samples.count
        locked = self.locked
        while not stop.is_set() and (max_ticks is None or ticks < max_ticks):
            held_off.waiting()
            if locked:
                now, due, arrival, timed = self.wait_sample(expected)
            else:
                now, due, arrival, timed = self.wait_until(expected), expected, None, True
                self.samples.wait(now)  # what came meanwhile, without waiting
            held_off.woke(now, due, min(due, expected - self.window) if locked else due, timed)
            taken, counted = self.samples.count - counted, self.samples.count
            self.stats.period_error.add(now - due)
            on_tick(expected, now)
            self.samples.acted()
            ticks += 1
            self.taken.append(taken)
            if taken == 0:
                counts["samples_repeated"] += 1
            elif locked and taken > 1:
                counts["samples_skipped"] += taken - 1
            still_locked = self.locked
            if locked and not still_locked:  # lock lost: the fixed grid goes on from this tick
                self.rate_period = self.period
                expected = now + self.period
            else:
                expected = (self.next_expected(expected, arrival) if locked
                            else expected + self.period)
            locked = still_locked
            # Busy when the next sample was due: a miss.
            expected = self.count_misses(expected, held_off.tick_done(), held_off.parts,
                                         held_off.since_done)
