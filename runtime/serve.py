"""`crl-run serve`: the controller on the ZMQ transport, at the control rate, until stopped.

The loop is one thread: each tick takes the newest observation and any pending goals from the
sockets (neither blocks), runs the controller and publishes its command, then sleeps to the next
absolute deadline. The deadlines are laid on the robot's sampling grid, from its first
observation's stamp, so ticks fall just after its samples arrive rather than at an arbitrary
phase of its period. On SIGINT/SIGTERM it
publishes the safe action once and exits.
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

from crl.runtime.controller import Command, Controller
from crl.runtime.loop import DEFAULT_SPIN_S, FixedRateLoop, open_realtime
from crl.runtime.messages import Action, Goal, Observation
from crl.runtime.observation import ObservationError
from crl.runtime.transport import Endpoints, RuntimeLink

STATUS_HZ = 5.0
# After the robot's sample (at most a quarter period): the transport's time to bring it over,
# and room for a robot that publishes a little late.
PHASE_LEAD_S = 0.001


class StartupError(RuntimeError):
    """The runtime could not start (no robot, a robot that does not fit the policy)."""


@dataclass(frozen=True)
class ServeOptions:
    endpoints: Endpoints = field(default_factory=Endpoints)
    wait_s: float = 30.0  # for the first observation
    spin_s: float = DEFAULT_SPIN_S
    realtime: bool = False
    seconds: float = 0.0  # stop after this long (0: until a signal)


def monotonic_stamp(obs: Observation, received: float) -> float:
    """The observation's wall-clock stamp on this process's monotonic clock, never later than
    its arrival (a robot clock ahead of ours must not make old data look fresh)."""
    return min(obs.stamp - (time.time() - time.monotonic()), received)


def to_message(link: RuntimeLink, cmd: Command) -> Action:
    session, seq, stamp = link.stamper.next()
    wall_obs = cmd.obs_time + (time.time() - time.monotonic())
    return Action(session, seq, stamp, cmd.joints, cmd.values, cmd.kind, cmd.safe, cmd.obs_seq,
                  wall_obs)


def first_deadline(obs_time: float, period: float, now: float) -> float:
    """The loop's first deadline: on the robot's sampling grid (its first observation's stamp
    plus whole periods), a short lead after a sample, so each tick finds a fresh observation
    just arrived rather than one up to a period old."""
    lead = min(PHASE_LEAD_S, period / 4)
    k = max(0, math.ceil((now - obs_time - lead) / period))
    return obs_time + lead + k * period


def goal_handler(controller: Controller) -> Callable[[Goal], tuple[bool, str]]:
    return lambda g: controller.set_goal(g.frame, g.values)


def wait_for_robot(link: RuntimeLink, controller: Controller, wait_s: float,
                   stop: threading.Event) -> Observation:
    """The first observation (goals are taken meanwhile); StartupError when none comes or the
    robot does not send what the policy needs."""
    deadline = time.monotonic() + wait_s
    while not stop.is_set():
        link.serve_goals(goal_handler(controller))
        obs = link.poll_observation()
        if obs is not None:
            try:
                controller.start(obs, monotonic_stamp(obs, time.monotonic()))
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
        link, said = open_realtime(lambda: RuntimeLink(options.endpoints))
        print(f"crl-run serve: {said}", file=sys.stderr)
    else:
        link = RuntimeLink(options.endpoints)
    try:
        wait_for_robot(link, controller, options.wait_s, stop)
        controller.warm_up()
        status(controller, link)
        loop = FixedRateLoop(controller.period, controller.stats, spin_s=options.spin_s)
        start = first_deadline(controller.latest_time, controller.period, time.monotonic())
        status_every = max(1, round(controller.rate_hz / STATUS_HZ))
        handle_goal = goal_handler(controller)
        end = time.monotonic() + options.seconds if options.seconds > 0 else None

        def on_tick(deadline: float, now: float) -> None:
            obs = link.poll_observation()
            if obs is not None:
                controller.observe(obs, monotonic_stamp(obs, now))
            link.serve_goals(handle_goal)
            cmd = controller.tick(now)
            link.publish_action(to_message(link, cmd))
            controller.stats.end_to_end.add(time.monotonic() - cmd.obs_time)
            if controller.stats.counts["ticks"] % status_every == 0:
                stats = status(controller, link)
                link.publish_status(stats)
                if on_status is not None:
                    on_status(stats)
            if end is not None and now >= end:
                stop.set()

        loop.run(on_tick, stop, start=start)
        # Leave the robot with the safe action, not the policy's last command.
        link.publish_action(to_message(link, controller.safe_command()))
        time.sleep(0.05)  # let the PUB socket hand it over before the context goes
        return status(controller, link)
    finally:
        link.close()
        _restore_signal_handlers(installed)


def status(controller: Controller, link: RuntimeLink) -> dict[str, float | int | str]:
    return {**controller.stats.to_dict(), **link.counters,
            "backend": controller.policy.backend, "policy_hz": controller.rate_hz}


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
