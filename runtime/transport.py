"""ZMQ transport between a robot and the runtime (ROS-free): msgpack messages over TCP.

Ports come from one base port P on one host (127.0.0.1 unless asked otherwise):

    robot binds    P     observations  PUB   robot → runtime (runtime keeps the latest only)
                   P+1   telemetry     PUB   robot → anyone (simulated robots: the true state)
    runtime binds  P+2   actions       PUB   runtime → robot (robot keeps the latest only)
                   P+3   goals         REP   anyone → runtime, answered accepted / rejected
                   P+4   status        PUB   runtime → anyone (statistics)

Each side binds what it publishes and connects to what it reads, so either can restart and ZMQ
reconnects by itself. A controller wants the newest observation, never a queue of old ones, but
not ZMQ's CONFLATE: it keeps the newest message whatever it holds, so a sender of garbage would
hide every good observation behind its own. Readers drain a short queue instead and keep the
newest message that decodes. Nothing here blocks a control loop: polls return at once, and every
message that fails to decode is dropped and counted by reason.
"""

from __future__ import annotations

import contextlib
import ipaddress
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic

import numpy as np
import zmq

from crl.runtime.messages import (
    MAX_MESSAGE_BYTES,
    REASONS,
    Action,
    Goal,
    GoalReply,
    M,
    Message,
    MessageError,
    Observation,
    SequenceGuard,
    Status,
    Telemetry,
    decode,
    encode,
    new_session,
)

DEFAULT_HOST, DEFAULT_PORT = "127.0.0.1", 5560
LATEST_QUEUE = 64  # messages a "latest only" reader keeps between polls
# ZMQ drops a peer whose message exceeds this (a memory bound); the decoder's own, smaller limit
# counts what lies between.
WIRE_LIMIT = 16 * MAX_MESSAGE_BYTES


class TransportError(RuntimeError):
    """A socket that could not be set up (a port in use, a bad host); one line, what to do."""


@dataclass(frozen=True)
class Endpoints:
    """Where the five streams live: one host and a base port."""

    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT

    def __post_init__(self) -> None:
        if not 1 <= self.port <= 65535 - 4:
            raise TransportError(f"port: {self.port} leaves no room for 5 ports (1..65531)")

    def url(self, offset: int) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"tcp://{host}:{self.port + offset}"

    @property
    def observations(self) -> str:
        return self.url(0)

    @property
    def telemetry(self) -> str:
        return self.url(1)

    @property
    def actions(self) -> str:
        return self.url(2)

    @property
    def goals(self) -> str:
        return self.url(3)

    @property
    def status(self) -> str:
        return self.url(4)

    @property
    def is_loopback(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False


def _socket(ctx: zmq.Context[zmq.Socket[bytes]], kind: int) -> zmq.Socket[bytes]:
    s = ctx.socket(kind)
    s.setsockopt(zmq.LINGER, 0)  # closing never waits for a peer that is gone
    s.setsockopt(zmq.MAXMSGSIZE, WIRE_LIMIT)
    return s


def _bind(sock: zmq.Socket[bytes], url: str, endpoints: Endpoints, what: str) -> None:
    try:
        sock.bind(url)
    except zmq.ZMQError as e:
        sock.close()
        raise TransportError(f"cannot bind {what} on {url} ({e}); is another process using the "
                             "port? choose another base port with --port") from None
    if not endpoints.is_loopback:
        print(f"crl: {what} bound on {url}: reachable from other machines, not only this one",
              file=sys.stderr)


def _subscriber(ctx: zmq.Context[zmq.Socket[bytes]], url: str, latest_only: bool
                ) -> zmq.Socket[bytes]:
    s = _socket(ctx, zmq.SUB)
    # A control stream's queue only needs to span one tick of messages; ZMQ drops beyond it.
    s.setsockopt(zmq.RCVHWM, LATEST_QUEUE if latest_only else 10_000)
    s.setsockopt(zmq.SUBSCRIBE, b"")
    s.connect(url)
    return s


class Counters:
    """Messages received and dropped, by reason (REASONS)."""

    def __init__(self) -> None:
        self.received = 0
        self.dropped = dict.fromkeys(REASONS, 0)

    def drop(self, reason: str) -> None:
        self.dropped[reason] += 1

    def to_dict(self) -> dict[str, int]:
        return {"received": self.received, **{f"dropped_{k}": v for k, v in self.dropped.items()}}


class Reader(Generic[M]):
    """A SUB socket of one message kind; `poll` decodes what is pending, drops and counts the bad
    and the out-of-order, and returns the newest good message (or None)."""

    def __init__(self, ctx: zmq.Context[zmq.Socket[bytes]], url: str, cls: type[M],
                 latest_only: bool):
        self.cls: type[M] = cls
        self.socket = _subscriber(ctx, url, latest_only)
        self.guard = SequenceGuard()
        self.counters = Counters()

    def _next(self) -> M | None:
        """The next good pending message, dropping and counting bad ones; None when none."""
        while True:
            try:
                data = self.socket.recv(zmq.NOBLOCK)
            except zmq.Again:
                return None
            self.counters.received += 1
            try:
                msg = decode(data, self.cls)
            except MessageError as e:
                self.counters.drop(e.reason)
                continue
            if not self.guard.accept(msg):
                self.counters.drop("out_of_order")
                continue
            return msg

    def poll(self, timeout_ms: int = 0) -> M | None:
        """The newest good message pending (waiting up to `timeout_ms` for one), or None."""
        if timeout_ms and not self.socket.poll(timeout_ms):
            return None
        newest = None
        while (msg := self._next()) is not None:
            newest = msg
        return newest

    def drain(self, timeout_ms: int = 0) -> list[M]:
        """Every good message pending, in order (for streams read in full, e.g. telemetry)."""
        if timeout_ms and not self.socket.poll(timeout_ms):
            return []
        out: list[M] = []
        while (msg := self._next()) is not None:
            out.append(msg)
        return out


class Writer:
    """A bound PUB socket that stamps and numbers what it sends."""

    def __init__(self, ctx: zmq.Context[zmq.Socket[bytes]], url: str, endpoints: Endpoints,
                 what: str):
        self.socket = _socket(ctx, zmq.PUB)
        self.socket.setsockopt(zmq.SNDHWM, 16)
        _bind(self.socket, url, endpoints, what)

    def send(self, msg: Message) -> None:
        # zmq.Again: no subscriber keeping up; PUB drops, as it would anyway.
        with contextlib.suppress(zmq.Again):
            self.socket.send(encode(msg), zmq.NOBLOCK)


class Stamper:
    """Session id and sequence numbers for one sender."""

    def __init__(self) -> None:
        self.session = new_session()
        self.seq = 0

    def next(self) -> tuple[int, int, float]:
        self.seq += 1
        return self.session, self.seq, time.time()


class RobotLink:
    """The robot's side: publishes observations and telemetry, reads the newest action."""

    def __init__(self, endpoints: Endpoints):
        self.endpoints = endpoints
        self.ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        try:
            self._obs = Writer(self.ctx, endpoints.observations, endpoints, "observations")
            self._tel = Writer(self.ctx, endpoints.telemetry, endpoints, "telemetry")
        except TransportError:
            self.ctx.destroy(linger=0)
            raise
        self._actions: Reader[Action] = Reader(self.ctx, endpoints.actions, Action, True)
        self.stamper = Stamper()

    @property
    def counters(self) -> dict[str, int]:
        return self._actions.counters.to_dict()

    def publish_observation(self, obs: Observation) -> None:
        self._obs.send(obs)

    def publish_telemetry(self, tel: Telemetry) -> None:
        self._tel.send(tel)

    def poll_action(self, timeout_ms: int = 0) -> Action | None:
        """The newest good action, waiting up to `timeout_ms` for one to arrive."""
        return self._actions.poll(timeout_ms)

    def close(self) -> None:
        self.ctx.destroy(linger=0)


GoalHandler = Callable[[Goal], tuple[bool, str]]


class RuntimeLink:
    """The runtime's side: reads the newest observation, answers goals, publishes actions and
    status."""

    def __init__(self, endpoints: Endpoints):
        self.endpoints = endpoints
        self.ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        try:
            self._actions = Writer(self.ctx, endpoints.actions, endpoints, "actions")
            self._status = Writer(self.ctx, endpoints.status, endpoints, "status")
            self._goals = _socket(self.ctx, zmq.REP)
            _bind(self._goals, endpoints.goals, endpoints, "goals")
        except TransportError:
            self.ctx.destroy(linger=0)
            raise
        self._obs: Reader[Observation] = Reader(self.ctx, endpoints.observations, Observation,
                                                True)
        self.goal_counters = Counters()
        self._goal_guard = SequenceGuard()
        self.stamper = Stamper()

    @property
    def counters(self) -> dict[str, int]:
        return {**{f"obs_{k}": v for k, v in self._obs.counters.to_dict().items()},
                **{f"goal_{k}": v for k, v in self.goal_counters.to_dict().items()}}

    def poll_observation(self) -> Observation | None:
        return self._obs.poll()

    def wait_observation(self, timeout_s: float) -> None:
        """Block until an observation is pending (or the timeout): for waiting, not for a loop."""
        self._obs.socket.poll(max(1, round(timeout_s * 1000)))

    def serve_goals(self, handler: GoalHandler) -> None:
        """Answer every pending goal request; a message that does not decode is answered with
        the reason too (a REP socket must answer each request)."""
        while True:
            try:
                data = self._goals.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            self.goal_counters.received += 1
            try:
                goal = decode(data, Goal)
                if not self._goal_guard.accept(goal):
                    raise MessageError("out_of_order", "an older goal than one already taken")
                accepted, reason = handler(goal)
            except MessageError as e:
                self.goal_counters.drop(e.reason)
                accepted, reason = False, str(e)
            session, seq, stamp = self.stamper.next()
            self._goals.send(encode(GoalReply(session, seq, stamp, accepted, reason)))

    def publish_action(self, action: Action) -> None:
        self._actions.send(action)

    def publish_status(self, stats: dict[str, float | int | str | bool]) -> None:
        session, seq, stamp = self.stamper.next()
        self._status.send(Status(session, seq, stamp, stats))

    def close(self) -> None:
        self.ctx.destroy(linger=0)


def send_goal(endpoints: Endpoints, values: list[float], frame: str,
              timeout_s: float = 2.0) -> GoalReply:
    """Send one goal to a running runtime and return its answer (TransportError on timeout)."""
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    try:
        sock = _socket(ctx, zmq.REQ)
        sock.connect(endpoints.goals)
        session, seq, stamp = Stamper().next()
        goal = Goal(session, seq, stamp, frame, np.asarray(values, dtype=np.float64))
        sock.send(encode(goal))
        if not sock.poll(max(1, math.ceil(timeout_s * 1000))):
            raise TransportError(f"no answer from a runtime on {endpoints.goals} within "
                                 f"{timeout_s:g} s; is `crl-run serve` running with this --port?")
        try:
            return decode(sock.recv(), GoalReply)
        except MessageError as e:
            raise TransportError(f"the runtime's answer did not decode ({e})") from None
    finally:
        ctx.destroy(linger=0)


def telemetry_reader(ctx: zmq.Context[zmq.Socket[bytes]], endpoints: Endpoints
                     ) -> Reader[Telemetry]:
    """Every telemetry message, in order (for scoring a closed loop)."""
    return Reader(ctx, endpoints.telemetry, Telemetry, latest_only=False)


def status_reader(ctx: zmq.Context[zmq.Socket[bytes]], endpoints: Endpoints) -> Reader[Status]:
    return Reader(ctx, endpoints.status, Status, latest_only=True)


def action_reader(ctx: zmq.Context[zmq.Socket[bytes]], endpoints: Endpoints,
                  latest_only: bool = False) -> Reader[Action]:
    """The runtime's actions as a robot (or a test watching it) sees them."""
    return Reader(ctx, endpoints.actions, Action, latest_only=latest_only)
