"""The controller: one control tick from the newest observation and the held goal to a command.

It knows nothing of ZMQ or ROS: a transport calls `observe` and `set_goal` with what arrived and
`tick` at the control rate (`crl.runtime.loop`), then publishes the returned `Command`. Each tick:
the newest observation (refused when older than the staleness limit), the policy input assembled
from the spec's named fields, the policy, [-1, 1] → physical units, clipped to the limits, through
the spec's command filter, ramped in after a start or a safety stop (soft start) and, where the
spec asks, after a new goal (goal ramp), limited in change per tick, returned. Anything
unsafe (stale data, no goal yet, a policy output that is not finite, a policy that raised) sends
the configured safe action instead, and is counted in `stats`.

Restarts: the rate limit and the soft start work from a reference, the command last sent. When
that command no longer says where the robot is (at the start, when data comes back after a stale
stop, at a new robot session: the robot restarted, or, with `max_joint_speed`, joints measured
moving faster than the robot can move them: a simulator's reset, a re-homed or re-plugged robot),
the reference is re-read from the newest measured positions (zero torque for effort control), so
the first command is never more than `max_action_change` from where the robot is measured,
whatever the previous robot was sent. After a stale stop, a robot measured near where the stop
began holding it (within RESUME_STEPS steps: it held still) keeps the rate limit counting from
the last command it got (`limit_from`), so no step between commands exceeds the limit.
The `hold` safe action holds the position measured when the stop began (never a previous
robot's target), reached under the rate limit like any command.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from crl.core.latency import percentile, summarize
from crl.core.spec import PolicySpec
from crl.runtime.loop import FixedWork, TickParts
from crl.runtime.messages import Observation
from crl.runtime.observation import ObservationAssembler, ObservationError
from crl.runtime.policy import Policy
from crl.runtime.robot_config import RobotConfig

Vector = NDArray[np.float64]
MODES = ("running", "soft_start", "goal_ramp", "no_goal", "stale", "fault", "stopped")
RATE_WINDOW_S = 1.0  # the live rate counts the actions of the last second
STALL_PERIODS = 3  # a gap between actions longer than this many control periods is a stall
# After a stale stop, the rate limit keeps counting from the last command while the robot is
# measured within this many rate-limit steps of where the stop held it (Controller._resync).
RESUME_STEPS = 2
ACTION_SLACK = 4  # action times kept beyond a window's worth at the control rate
MISS_LOG = 64  # the last missed ticks kept with their parts (`Stats.log_miss`)


class Window:
    """The last `capacity` samples of a quantity (a fixed ring, no allocation per sample).

    Live statistics (`percentile`, `max`) look at the newest `RECENT` samples only: they are
    computed inside the control loop, so their cost must not grow with a benchmark's capacity.
    """

    RECENT = 1024

    def __init__(self, capacity: int = 4096):
        self.buf = np.zeros(capacity)
        self.count = 0

    def add(self, value: float) -> None:
        self.buf[self.count % len(self.buf)] = value
        self.count += 1

    def values(self) -> NDArray[np.float64]:
        """Every sample kept, oldest first."""
        n, cap = self.count, len(self.buf)
        if n <= cap:
            return self.buf[:n]
        i = n % cap
        return np.concatenate([self.buf[i:], self.buf[:i]])

    def recent(self) -> NDArray[np.float64]:
        n, cap = min(self.count, self.RECENT, len(self.buf)), len(self.buf)
        idx = (np.arange(self.count - n, self.count)) % cap
        return self.buf[idx]

    def percentile(self, q: float) -> float:
        return percentile(self.recent(), q)

    def max(self) -> float:
        v = self.recent()
        return float(v.max()) if len(v) else math.nan

    def last(self) -> float:
        """The newest sample (NaN before any)."""
        return float(self.buf[(self.count - 1) % len(self.buf)]) if self.count else math.nan


class ActionTimes:
    """When the controller's commands went out: the rate over the last `RATE_WINDOW_S` and the
    longest gap between consecutive commands, so a status cannot average a stall away.

    `add` is O(1) (a ring of times, sized to hold more than a window at the control rate); the
    rate is found when a status is taken.
    """

    def __init__(self, capacity: int):
        self.times = Window(capacity)
        self.gap_max = 0.0  # s, since the last status
        self.gap_max_run = 0.0  # s, since the start

    def add(self, t: float) -> None:
        if self.times.count:
            gap = t - self.times.last()
            self.gap_max = max(self.gap_max, gap)
            self.gap_max_run = max(self.gap_max_run, gap)
        self.times.add(t)

    def rate(self, now: float) -> float:
        """Actions per second over the last `RATE_WINDOW_S` to `now`, measured from the last
        action before that window (or, early on, the oldest kept), so whole periods are counted;
        0 when none went out in the window."""
        t = self.times.values()
        if len(t) == 0:
            return 0.0
        first = int(np.searchsorted(t, now - RATE_WINDOW_S, side="right"))
        if first > 0:
            n, span = len(t) - first, now - t[first - 1]
        else:  # less than a window kept: from the oldest action kept
            n, span = len(t) - 1, now - t[0]
        return n / span if n > 0 and span > 0 else 0.0

    def take_gap(self, now: float) -> float:
        """The longest gap since the last call, the one still open at `now` included; resets."""
        open_gap = now - self.times.last() if self.times.count else 0.0
        gap, self.gap_max = max(self.gap_max, open_gap), 0.0
        return gap


class Stats:
    """What the loop did: rates, latencies, misses and every safety intervention, counted.

    `rate_hz` is the control rate (it sizes the ring of action times); `clock` stamps the
    commands as they go out (a test may move it by hand).
    """

    # samples_repeated / samples_skipped: ticks that took no new observation, and observations
    # no tick acted on, while the loop is locked to the robot's samples (crl.runtime.loop).
    # joint_jumps: observations whose joints moved faster than the config's max_joint_speed
    # since the one before (handled as a restart). misses_scheduling: the misses the platform
    # explains, the loop's thread held off a core or woken late (crl.runtime.loop.HeldOff).
    # policy_slowed: policy calls that took over SLOWED_FACTOR times their usual CPU time
    # (crl.runtime.loop.FixedWork): the computer ran them slower.
    COUNTERS = ("ticks", "misses", "misses_scheduling", "policy_slowed", "safe_ticks",
                "stale_stops", "robot_restarts", "joint_jumps", "nonfinite_actions",
                "policy_errors", "observation_rejections", "goals_accepted", "goal_rejections",
                "samples_repeated", "samples_skipped")

    def __init__(self, window: int = 4096, rate_hz: float = 0.0,
                 clock: Callable[[], float] = time.monotonic):
        self.period_error = Window(window)  # s, actual wake-up − deadline
        self.policy_latency = Window(window)  # s, policy.act
        self.end_to_end = Window(window)  # s, observation received → command published
        # Room for a window of actions at `rate_hz` and the one before it (jitter, a shutdown's
        # extra command: a few more), whatever `window` a benchmark keeps.
        kept = math.ceil(rate_hz * RATE_WINDOW_S) + ACTION_SLACK if rate_hz > 0 else window
        self.actions = ActionTimes(kept)
        self.counts = dict.fromkeys(self.COUNTERS, 0)
        self.mode = "no_goal"
        self.last_goal_rejection = ""
        self.clock = clock
        self.started = clock()
        # (uptime s, Unix time, how late, misses, own, held off, time since the tick's command
        # or None, parts): the last MISS_LOG.
        self.miss_log: deque[tuple[float, float, float, int, int, float, float | None,
                                   TickParts]] = deque(maxlen=MISS_LOG)

    def log_miss(self, late: float, misses: int, own: int, held_off: float,
                 parts: TickParts) -> None:
        """A tick ended `late` s past its next deadline: `misses` counted, `own` of them the
        loop's (the rest the platform's: `held_off` s explained them); `parts`: where the
        tick's time went (crl.runtime.loop.HeldOff). The time since the last command went out
        says which of the tick's work came after it (a hold there delays the next command, not
        this one)."""
        now = self.clock()
        since = now - self.actions.times.last() if self.actions.times.count else None
        self.miss_log.append((now - self.started, time.time(), late, misses, own, held_off,
                              since, parts))

    def misses_log(self) -> list[dict[str, float | int | bool | None]]:
        """The last MISS_LOG missed ticks, oldest first: when, how late, how many misses and
        how many the loop's own, how long after the last command, and the tick's parts, in ms
        (`--stats-out` writes them)."""
        ms = 1e3
        return [{"uptime_s": round(up, 3), "time_unix": round(unix, 4),
                 "late_ms": round(late * ms, 3), "misses": misses, "own": own,
                 "held_off_ms": round(held * ms, 3),
                 "after_action_ms": None if since is None else round(since * ms, 3),
                 **{k if isinstance(v, bool) else f"{k}_ms":
                    v if isinstance(v, bool) else round(v * ms, 3)
                    for k, v in parts._asdict().items()}}
                for up, unix, late, misses, own, held, since, parts in self.miss_log]

    def to_dict(self) -> dict[str, float | int | str]:
        """The status now. Taking it starts a new interval for `max_gap_ms`."""
        ms = 1e3
        out: dict[str, float | int | str] = dict(self.counts)
        now = self.clock()
        out.update(
            mode=self.mode,
            uptime_s=round(now - self.started, 3),
            rate_hz=self.actions.rate(now),
            max_gap_ms=self.actions.take_gap(now) * ms,
            max_gap_run_ms=self.actions.gap_max_run * ms,
            last_goal_rejection=self.last_goal_rejection,
        )
        for name, window, figures in (("period_error", self.period_error, ("p50", "p99", "max")),
                                      ("policy_latency", self.policy_latency, ("p50", "p99")),
                                      ("end_to_end", self.end_to_end, ("p50", "p99"))):
            summary = summarize(window.recent())  # one sort a window: this runs in the loop
            out.update({f"{name}_{k}_ms": summary[k] * ms for k in figures})
        return out


@dataclass(frozen=True)
class Command:
    """One tick's output: physical values in the robot's command order."""

    joints: tuple[str, ...]
    values: Vector
    kind: str  # "position" | "effort"
    safe: bool
    mode: str
    obs_seq: int
    obs_time: float  # the observation's time on this process's monotonic clock
    obs_received: float  # when it arrived here (monotonic): the runtime's latency runs from it
    obs_stamp: float  # its own stamp, as the robot sent it (the action echoes it)


class Controller:
    """Holds the goal and the newest observation; `tick` turns them into a command.

    `rate_hz` overrides the spec's control rate (benchmarks); `speed` runs the clock that many
    times faster than real time (a faster-than-real-time sim robot): periods and the staleness
    limit shrink with it, while the soft start keeps its length in ticks. `clock` is the loop's
    (a simulator's under ROS use_sim_time): the statistics' rates and gaps are in its time.
    """

    def __init__(self, policy: Policy, config: RobotConfig, *, rate_hz: float | None = None,
                 speed: float = 1.0, window: int = 4096,
                 clock: Callable[[], float] = time.monotonic):
        spec: PolicySpec = policy.spec
        self.policy, self.spec, self.config = policy, spec, config
        self.assembler = ObservationAssembler(spec, config)  # checks config against spec
        if speed <= 0 or not math.isfinite(speed):
            raise ValueError(f"speed: must be positive, got {speed}")
        self.rate_hz = rate_hz or spec.control_hz
        self.period = 1.0 / (self.rate_hz * speed)
        safety = config.safety
        self.max_age = safety.max_observation_age * self.period
        self.ramp_ticks = round(safety.soft_start * self.rate_hz)
        a = spec.action
        self.scale, self.offset = np.asarray(a.scale), np.asarray(a.offset)
        self.low, self.high = np.asarray(a.low), np.asarray(a.high)
        self.kind = a.kind
        self.lowpass = a.lowpass
        self.goal_ramp = a.goal_ramp
        self.success_radius = spec.success_radius
        self.command_joints = config.command_joints
        self.to_command = np.asarray([a.joints.index(j) for j in config.command_joints])
        self.max_change = safety.max_action_change
        self.max_joint_speed = safety.max_joint_speed
        self.stats = Stats(window, rate_hz=self.rate_hz * speed, clock=clock)
        # The policy's call on the thread's CPU clock: one that took far longer than usual ran on
        # a slowed computer, and its loop counts the excess as the platform's.
        self.policy_work = FixedWork()
        self.goal: NDArray[np.float32] | None = None
        self.goal_low = np.asarray(spec.goal.low) - safety.goal_margin
        self.goal_high = np.asarray(spec.goal.high) + safety.goal_margin
        self.latest: Observation | None = None
        self.latest_time = -math.inf
        self.latest_received = -math.inf
        # The reference of the soft start, the action filter and the policy's `last_action`: the
        # command last sent (physical, spec action order), or where the robot was measured when
        # that no longer applies.
        self.last_sent: Vector | None = None
        # The rate limit's reference: the command this robot last got. Kept when data comes
        # back fresh from a robot that held still through the stale stop (a command that jumped
        # to its measured pose would be a step the limit forbids); reset for a robot that never
        # got it (start, a new session) or was moved outside the controller (`_resync`).
        self.limit_from: Vector | None = None
        self.hold: Vector | None = None  # the `hold` safe action's target, set when a stop begins
        self.ramp_left = 0  # ticks of soft start (or goal ramp) still to go
        self.ramp_len = 0  # the ramp's whole length in ticks
        self.ramp_from: Vector | None = None
        self.stopped = True  # a soft start is due when the policy next acts
        self.goal_ramp_due = False  # a new goal came: its commands ramp in (spec.action.goal_ramp)
        self.ramp_mode = "soft_start"  # the ramp under way: "soft_start" or "goal_ramp"
        self.ramp_for_goal = False  # the ramp under way is (also) a new goal's
        self.resync_due = False  # data went stale: re-read the reference when it is fresh again

    # -- inputs --------------------------------------------------------------------------------

    def start(self, obs: Observation, obs_time: float, received: float | None = None) -> None:
        """The first observation: a robot that does not send what the policy needs is refused
        here, naming the joint or field (ObservationError). `obs_time`: when it was measured
        (monotonic), for its age; `received`: when it arrived (default: `obs_time`)."""
        self.assembler.check(obs)
        self.latest, self.latest_time = obs, obs_time
        self.latest_received = obs_time if received is None else received
        self.stats.started = self.stats.clock()
        self._resync()

    def observe(self, obs: Observation, obs_time: float, received: float | None = None) -> bool:
        """Take a newer observation; one lacking a needed joint or field is refused and counted
        (the previous one ages towards the staleness limit). One from a new session is a
        restarted robot, counted: holding and the next soft start begin where it is measured.
        So does one whose joints moved faster than `max_joint_speed` since the one before."""
        try:
            self.assembler.check(obs)
        except ObservationError:
            self.stats.counts["observation_rejections"] += 1
            return False
        restarted = self.latest is not None and obs.session != self.latest.session
        jumped = not restarted and self._jumped(obs, obs_time)
        self.latest, self.latest_time = obs, obs_time
        self.latest_received = obs_time if received is None else received
        if restarted or jumped:
            self.stats.counts["robot_restarts" if restarted else "joint_jumps"] += 1
            self._resync()
        return True

    def _jumped(self, obs: Observation, obs_time: float) -> bool:
        """The commanded joints moved faster than `max_joint_speed` since the last observation:
        moved outside this controller (a simulator's reset, a re-homed robot), so the command
        history no longer says where the robot is. The time between is taken as at least one
        control period, so a fast joint-state stream's noise never reads as speed."""
        if self.max_joint_speed is None or self.latest is None:
            return False
        joints = self.spec.action.joints
        moved = np.abs(self.assembler.joint_values(obs, joints)
                       - self.assembler.joint_values(self.latest, joints)).max()
        return bool(moved > self.max_joint_speed * max(obs_time - self.latest_time, self.period))

    def set_goal(self, frame: str, values: NDArray[np.float64] | list[float]) -> tuple[bool, str]:
        """Validate and hold a goal; a rejected goal keeps the previous one and says why."""
        reason = self.check_goal(frame, np.asarray(values, dtype=np.float64))
        if reason:
            self.stats.counts["goal_rejections"] += 1
            self.stats.last_goal_rejection = reason
            return False, reason
        goal = np.asarray(values, dtype=np.float32)
        if self.goal_ramp and (self.goal is None or float(np.linalg.norm(goal - self.goal))
                               > self.success_radius):
            # A new reach, not a goal re-sent or moved within the success radius (a goal
            # stream): ramp in from the command held now, as the env's evaluation episodes
            # begin. Its first, largest move is what an unseen delay turns into a swing.
            self.goal_ramp_due = True
        self.goal = goal
        self.stats.counts["goals_accepted"] += 1
        return True, "accepted"

    def check_goal(self, frame: str, g: Vector) -> str:
        """Why a goal is refused ("" when it is fine)."""
        spec = self.spec
        if frame != spec.goal.frame:
            return (f"goal frame {frame!r} is not the policy's goal frame {spec.goal.frame!r}; "
                    "transform it first")
        if g.shape != (spec.goal_dim,):
            return f"goal has {g.size} values, the policy's goal has {spec.goal_dim}"
        if not np.isfinite(g).all():
            return "goal has non-finite values"
        outside = (g < self.goal_low) | (g > self.goal_high)
        if outside.any():
            i = int(np.argmax(outside))
            return (f"goal[{i}] = {g[i]:.4g} is outside the policy's training goal box "
                    f"[{self.goal_low[i]:.4g}, {self.goal_high[i]:.4g}] (margin included)")
        return ""

    # -- the tick ------------------------------------------------------------------------------

    def tick(self, now: float) -> Command:
        """One control step at monotonic time `now`."""
        if self.latest is None:
            raise RuntimeError("Controller.tick before start(): no observation yet")
        self.stats.counts["ticks"] += 1
        if now - self.latest_time > self.max_age:
            if self.stats.mode != "stale":
                self.stats.counts["stale_stops"] += 1
            self.resync_due = True
            return self._safe("stale")
        if self.resync_due:  # fresh again: the robot may have moved (or been moved) meanwhile
            self._resync(same_robot=True)
        if self.goal is None:
            return self._safe("no_goal")
        x = self.policy_input()
        t0 = time.perf_counter()
        self.policy_work.start()
        try:
            a = np.asarray(self.policy.act(x, self.goal), dtype=np.float64)
        except Exception:  # any backend failure: the robot gets the safe action, never a crash
            self.stats.counts["policy_errors"] += 1
            return self._safe("fault")
        self.policy_work.done()
        self.stats.counts["policy_slowed"] = self.policy_work.slowed
        self.stats.policy_latency.add(time.perf_counter() - t0)
        if a.shape != (self.spec.act_dim,) or not np.isfinite(a).all():
            self.stats.counts["nonfinite_actions"] += 1
            return self._safe("fault")
        target = np.clip(self.offset + self.scale * np.clip(a, -1.0, 1.0), self.low, self.high)
        if self.lowpass < 1.0:  # the filter the policy was trained behind, from the last command
            last = self._reference()
            target = last + self.lowpass * (target - last)
        if self.stopped or self.goal_ramp_due:
            # Ramp in: the first action after start or a safety stop (soft start), or after a
            # new goal (the goal ramp); both at once, the longer.
            self.ramp_left = self.ramp_len = max(self.ramp_ticks if self.stopped else 0,
                                                 self.goal_ramp if self.goal_ramp_due else 0)
            self.ramp_mode = "soft_start" if self.stopped else "goal_ramp"
            self.ramp_for_goal = self.goal_ramp_due
            self.stopped = self.goal_ramp_due = False
            self.ramp_from = self._reference()
        mode = "running"
        if self.ramp_left > 0 and self.ramp_from is not None:
            r = 1.0 - (self.ramp_left - 1) / self.ramp_len
            target = self.ramp_from + r * (target - self.ramp_from)
            self.ramp_left -= 1
            mode = self.ramp_mode
        return self._send(target, safe=False, mode=mode)

    def policy_input(self) -> NDArray[np.float32]:
        """The observation vector the policy sees now (for readouts such as the critic's)."""
        if self.latest is None:
            raise RuntimeError("Controller.policy_input before start(): no observation yet")
        return self.assembler.assemble(self.latest, self._last_action())

    def warm_up(self) -> str:
        """Run once, before the loop, what is slow the first time (ONNX Runtime allocating its
        buffers), so the first ticks do not overrun. Returns why the policy failed ("" when it
        ran): the loop never stops for it (each tick it fails sends the safe action, counted
        in `policy_errors`), so a caller says so once."""
        goal = self.goal if self.goal is not None else (
            (np.asarray(self.spec.goal.low) + self.spec.goal.high) / 2).astype(np.float32)
        try:
            self.policy.act(self.policy_input(), goal)
        except Exception as e:  # reported, and counted when a tick acts
            return f"{type(e).__name__}: {e}"[:200]
        return ""

    def keep_warm(self) -> None:
        """Run the policy on the newest input and drop the result, after a tick that sent the
        safe action (no goal yet, a safety stop) and so did not run it. Memory a process leaves
        untouched goes cold: on the 2-core VM the depth-64 policy's first call took 22 ms of CPU
        after 0.5 s without one and 86 ms after 3 s (1.4 ms warm; no page fault the guest saw:
        the host had taken its pages back), and a GPU's clocks drop when idle. Without this the
        first action after a stop, or on the first goal, overran its period. A failure is the
        acting ticks' to count. It is the tick's call, timed as one (`FixedWork`): a call the
        machine ran over twice as slow counts its excess as the platform's (measured in the
        10-minute soak: a warm-up call after a robot restart took 10.2 ms of CPU, after the
        command, and the tick ended past the next sample)."""
        self.policy_work.start()
        self.warm_up()
        self.policy_work.done()
        self.stats.counts["policy_slowed"] = self.policy_work.slowed

    def safe_command(self, mode: str = "stopped") -> Command:
        """The safe action now (what a runtime sends once when it shuts down)."""
        return self._safe(mode)

    # -- helpers -------------------------------------------------------------------------------

    def _safe(self, mode: str) -> Command:
        self.stats.counts["safe_ticks"] += 1
        if not self.stopped or self.hold is None:  # a stop begins: hold still where it is now
            self.hold = self._measured()
        self._end_ramp()
        self.stopped = True
        safety = self.config.safety
        if safety.safe_action == "hold":
            target = self.hold
        elif safety.safe_action == "zero":
            target = np.zeros(self.spec.act_dim)
        else:
            target = np.asarray([safety.default_pose[j] for j in self.spec.action.joints])
        # Zero torque must act at once; a position target may be reached gradually.
        limit = self.kind == "position"
        return self._send(np.clip(target, self.low, self.high), safe=True, mode=mode,
                          rate_limit=limit)

    def _measured(self) -> Vector:
        """Holding still where the robot is: its newest measured joint positions (position
        control, within the limits) or zero torque (effort)."""
        if self.kind == "effort":
            return np.zeros(self.spec.act_dim)
        assert self.latest is not None
        measured = self.assembler.joint_values(self.latest, self.spec.action.joints)
        return np.asarray(np.clip(measured, self.low, self.high), dtype=np.float64)

    def _resync(self, same_robot: bool = False) -> None:
        """The command history no longer says where the robot is (start, stale data, a new
        session): hold and soft-start from where it is measured now. `same_robot`: data came
        back fresh from the robot that got the last command. Measured within RESUME_STEPS
        rate-limit steps of where the stop began holding it, it held still (or lagged behind
        the commands, as it may while running), and the rate limit keeps counting from that
        command: no step between commands is larger than the limit. Further away, it was moved
        (by hand, brakes released) and the limit starts from where it is, as for a new robot: a
        command that led it back toward the old target would be worse than one large step."""
        measured = self._measured()
        moved = (self.hold is None or self.max_change is None
                 or bool(np.any(np.abs(measured - self.hold)
                                > RESUME_STEPS * self.max_change)))
        self.hold = measured
        self.last_sent = measured.copy()
        if not same_robot or moved or self.limit_from is None:
            self.limit_from = measured.copy()
        self._end_ramp()
        self.stopped, self.resync_due = True, False

    def _end_ramp(self) -> None:
        """A stop ends any ramp under way. One a new goal began is run again, whole, when the
        policy next acts (with the soft start, the longer): the reach it began is not done, and
        the policy's evaluations ramped in every reach."""
        if self.ramp_left > 0 and self.ramp_for_goal:
            self.goal_ramp_due = True
        self.ramp_left = 0

    def _reference(self) -> Vector:
        """The reference of the soft start, the action filter and the policy's `last_action`:
        the last sent (or, before any, the measured position). The rate limit's is
        `limit_from`."""
        return np.array(self.last_sent if self.last_sent is not None else self._measured(),
                        dtype=np.float64)

    def _last_action(self) -> Vector:
        """The `last_action` observation field: the last command, normalized like the env's."""
        return np.asarray((self._reference() - self.offset) / self.scale, dtype=np.float64)

    def _send(self, target: Vector, *, safe: bool, mode: str, rate_limit: bool = True
              ) -> Command:
        if rate_limit and self.max_change is not None and self.limit_from is not None:
            step = np.clip(target - self.limit_from, -self.max_change, self.max_change)
            target = self.limit_from + step
        self.last_sent = self.limit_from = target
        self.stats.mode = mode
        self.stats.actions.add(self.stats.clock())
        assert self.latest is not None
        return Command(self.command_joints, target[self.to_command], self.kind, safe, mode,
                       self.latest.seq, self.latest_time, self.latest_received, self.latest.stamp)
