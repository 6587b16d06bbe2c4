"""`crl-run serve`: the controller on the ZMQ transport, at the control rate, until stopped.

The loop is one thread, locked to the robot's samples (`crl.runtime.loop.SampleLockedLoop`):
between ticks it waits on the observation socket, and a tick fires as the observation it expects
arrives (or at the window's end when none comes, so a silent robot still gets its safe action on
this computer's clock). The tick takes that observation and any pending goals, runs the
controller and publishes its command. The loop's grid follows the robot's clock, so the ticks
stay on its samples for as long as it runs. Inputs cannot stop or stall a tick: reads are
bounded (a few goals a tick), and any exception from an input, or from the tick it feeds, is
counted (`input_errors`, `tick_errors`) and the tick still publishes an action. On
SIGINT/SIGTERM it publishes the safe action once and exits.
"""

from __future__ import annotations

import math
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import FrameType

from crl.runtime.auth import Keys
from crl.runtime.controller import Command, Controller
from crl.runtime.loop import (
    DEFAULT_SPIN_S,
    SampleLockedLoop,
    SpareTime,
    before_blocking,
    open_realtime,
)
from crl.runtime.messages import Action, Goal, Observation, bounded
from crl.runtime.observation import ObservationError
from crl.runtime.stamps import StampAges
from crl.runtime.transport import FINE_POLL_S, POLL_STEP_S, Endpoints, RuntimeLink

STATUS_HZ = 5.0


class StartupError(RuntimeError):
    """The runtime could not start (no robot, a robot that does not fit the policy)."""


@dataclass(frozen=True)
class ServeOptions:
    endpoints: Endpoints = field(default_factory=Endpoints)
    wait_s: float = 30.0  # for the first observation
    spin_s: float = DEFAULT_SPIN_S
    realtime: bool = False
    seconds: float = 0.0  # stop after this long (0: until a signal)
    keys: Keys | None = None  # the runtime's CURVE keys (crl.runtime.auth); required off loopback


def to_message(link: RuntimeLink, cmd: Command) -> Action:
    """The command as an action that names the observation it answers by the robot's own seq
    and stamp: the robot measures the latency on its own clock, whatever ours reads."""
    session, seq, stamp = link.stamper.next()
    return Action(session, seq, stamp, cmd.joints, cmd.values, cmd.kind, cmd.safe, cmd.obs_seq,
                  cmd.obs_stamp)


def goal_handler(controller: Controller) -> Callable[[Goal], tuple[bool, str]]:
    return lambda g: controller.set_goal(g.frame, g.values)


class Inputs:
    """A tick's inputs: the newest observation and a few goals. No input may stop or skip a
    tick: an exception while reading or taking one is counted (`errors`) and the tick goes on to
    its action, so the staleness watchdog and the safe action never depend on input."""

    def __init__(self, link: RuntimeLink, controller: Controller):
        self.link, self.controller = link, controller
        self.handle_goal = goal_handler(controller)
        self.errors = 0
        self.held: tuple[Observation, float] | None = None  # read between ticks, its arrival
        # A clock step as large as half the staleness limit could age fresh data past it.
        self.ages = StampAges(step_s=controller.max_age / 2)

    def observation_time(self, obs: Observation, received: float) -> float:
        """When `obs` was measured, on this process's monotonic clock: its arrival (`received`)
        less its age, the robot clock's offset from ours taken out (`StampAges`)."""
        offset = time.time() - time.monotonic()
        return received - self.ages.age(obs.session, obs.stamp, offset, received)

    def poll_observation(self, until: float = math.inf) -> Observation | None:
        try:
            return self.link.poll_observation(until)
        except Exception:
            self.errors += 1
            return None

    def observe(self, now: float) -> None:
        """Hand the controller the observation the loop's wait took as the tick's sample, or,
        when it took none (a watchdog tick), the newest pending now. The socket is not read
        again after the wait took one: what came since (within microseconds) is the next
        tick's, and a flood's bad messages queued behind the sample are decoded in the next
        wait, after the action went out, not on the way from observation to action."""
        obs: Observation | None
        if self.held is not None:
            (obs, received), self.held = self.held, None
        else:  # a watchdog tick, due now: what is pending, read no longer than one frame
            obs, received = self.poll_observation(until=now), now
        if obs is None:
            return
        try:
            self.controller.observe(obs, self.observation_time(obs, received), received)
        except Exception:
            self.errors += 1

    def serve_goals(self) -> None:
        try:
            self.link.serve_goals(self.handle_goal)
        except Exception:
            self.errors += 1


class ObservationSamples:
    """The robot's samples for the loop (`crl.runtime.loop.Samples`): `wait` reads the
    observation socket as messages come, so the tick acts on an observation the moment it
    arrives and knows when that was; only good observations count (garbage wakes the wait but
    neither ends it nor counts)."""

    def __init__(self, inputs: Inputs):
        self.inputs = inputs

    @property
    def count(self) -> int:
        return self.inputs.link.observations_accepted

    def wait(self, until: float) -> float | None:
        # A wait that begins before `until` stops reading there too: a flood of bad messages
        # must not hold back the watchdog's tick (what is left is read in the next wait). One
        # already due reads what came, as much as a poll reads: a loop off the robot's samples
        # reads the socket only here, once a tick, and must keep up with what comes.
        bound = until if until > time.monotonic() else math.inf
        while True:
            obs = self.inputs.poll_observation(bound)
            if obs is not None:
                arrival = time.monotonic()
                self.inputs.held = (obs, arrival)
                return arrival
            remaining = until - time.monotonic()
            if remaining <= 0:
                return None
            # ZMQ's poll waits whole milliseconds: the last stretch before `until` polls
            # without blocking, so a watchdog tick is as punctual as a deadline.
            block_s = remaining - FINE_POLL_S
            before_blocking()
            try:
                if block_s >= 0.001:
                    self.inputs.link.wait_observation(block_s)
                else:
                    time.sleep(min(remaining, POLL_STEP_S))
            except Exception:  # the wait, like any input, must not stop the loop: counted
                self.inputs.errors += 1
                before_blocking()
                time.sleep(max(0.0, until - time.monotonic()))

    def acted(self) -> None:
        """The tick took the held observation (`Inputs.observe`)."""


def wait_for_robot(link: RuntimeLink, controller: Controller, wait_s: float,
                   stop: threading.Event, inputs: Inputs | None = None) -> Observation:
    """The first observation (goals are taken meanwhile); StartupError when none comes or the
    robot does not send what the policy needs."""
    inputs = inputs or Inputs(link, controller)
    deadline = time.monotonic() + wait_s
    while not stop.is_set():
        inputs.serve_goals()
        obs = inputs.poll_observation()
        if obs is not None:
            try:
                received = time.monotonic()
                controller.start(obs, inputs.observation_time(obs, received), received)
            except ObservationError as e:
                raise StartupError(f"the robot does not fit the policy: {e}") from None
            return obs
        if time.monotonic() > deadline:
            raise StartupError(f"no observation from a robot on {link.endpoints.observations} "
                               f"within {wait_s:g} s; is the robot (or `crl-sim robot`) running "
                               "with this --port?")
        link.wait_observation(0.005)
    raise StartupError("stopped before a robot appeared")


def serve(controller: Controller, options: ServeOptions,
          on_status: Callable[[dict[str, float | int | str]], None] | None = None,
          stop: threading.Event | None = None) -> dict[str, float | int | str]:
    """Run the controller on the ZMQ transport; returns the final statistics."""
    stop = stop or threading.Event()
    installed = _install_signal_handlers(stop)
    if options.realtime:
        link, said = open_realtime(lambda: RuntimeLink(options.endpoints, options.keys))
        print(f"crl-run serve: {said}", file=sys.stderr)
    else:
        link = RuntimeLink(options.endpoints, options.keys)
    inputs = Inputs(link, controller)
    tick_errors = 0
    try:
        wait_for_robot(link, controller, options.wait_s, stop, inputs)
        first_arrival = time.monotonic()
        failed = controller.warm_up()
        if failed:
            print(f"crl-run serve: the policy failed its first call ({failed}); each tick it "
                  "fails sends the safe action, counted in policy_errors; try it alone with "
                  "`crl-run bench --policy FILE`", file=sys.stderr)
        status(controller, link, inputs.errors, tick_errors)  # its first call's cost, not a tick's
        loop = SampleLockedLoop(controller.period, controller.stats, ObservationSamples(inputs),
                                spin_s=options.spin_s)
        # The first sample after the robot's first (on its grid: the loop steps over those that
        # came during the warm-up).
        start = first_arrival + controller.period
        status_time = SpareTime(max(1, round(controller.rate_hz / STATUS_HZ)), controller.period)
        warm_time = SpareTime(1, controller.period)  # after safe ticks, at least every other
        end = time.monotonic() + options.seconds if options.seconds > 0 else None

        def on_tick(deadline: float, now: float) -> None:
            nonlocal tick_errors
            inputs.observe(now)
            try:
                cmd = controller.tick(now)
            except Exception:  # whatever an input made of the tick, the robot gets an action
                tick_errors += 1
                cmd = controller.safe_command("fault")
            link.publish_action(to_message(link, cmd))
            controller.stats.end_to_end.add(time.monotonic() - cmd.obs_received)
            if cmd.safe and warm_time.now(controller.stats.counts["ticks"], deadline):
                controller.keep_warm()
            # Goals after the action: answering a flood's few a tick (decode, check, reply) is
            # not on the way from observation to action; a goal taken now acts from the next tick.
            inputs.serve_goals()
            if status_time.now(controller.stats.counts["ticks"], deadline):
                stats = status(controller, link, inputs.errors, tick_errors)
                link.publish_status(stats)
                if on_status is not None:
                    on_status(stats)
            if end is not None and now >= end:
                stop.set()

        loop.run(on_tick, stop, start=start)
        # Leave the robot with the safe action, not the policy's last command.
        link.publish_action(to_message(link, controller.safe_command()))
        time.sleep(0.05)  # let the PUB socket hand it over before the context goes
        return status(controller, link, inputs.errors, tick_errors)
    finally:
        link.close()
        _restore_signal_handlers(installed)


def status(controller: Controller, link: RuntimeLink, input_errors: int, tick_errors: int
           ) -> dict[str, float | int | str]:
    """The statistics the status stream carries; text is bounded (a goal's refusal quotes it)
    so the message always encodes and decodes."""
    stats = {**controller.stats.to_dict(), **link.counters, "input_errors": input_errors,
             "tick_errors": tick_errors, "backend": controller.policy.backend,
             "policy_hz": controller.rate_hz}
    return {k: bounded(v) if isinstance(v, str) else v for k, v in stats.items()}


Handler = Callable[[int, FrameType | None], object] | int | None


def _install_signal_handlers(stop: threading.Event) -> dict[int, Handler]:
    if threading.current_thread() is not threading.main_thread():
        return {}
    old: dict[int, Handler] = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        old[sig] = signal.signal(sig, lambda *_: stop.set())
    return old


def _restore_signal_handlers(old: dict[int, Handler]) -> None:
    for sig, handler in old.items():
        signal.signal(sig, handler)
