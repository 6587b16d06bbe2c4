"""ZMQ transport between a robot and the runtime (ROS-free): msgpack messages over TCP.

Ports come from one base port P on one host (127.0.0.1 unless asked otherwise; any host beyond
loopback needs CURVE keys, `crl.runtime.auth`, which then secure every socket):

    robot binds    P     observations  PUB   robot → runtime (runtime keeps the latest only)
                   P+1   telemetry     PUB   robot → anyone (simulated robots: the true state)
    runtime binds  P+2   actions       PUB   runtime → robot (robot keeps the latest only)
                   P+3   goals         REP   anyone → runtime, answered accepted / rejected
                   P+4   status        PUB   runtime → anyone (statistics)

Each side binds what it publishes and connects to what it reads, so either can restart and the
reader reconnects (it re-creates its socket when a connection drops: ZMQ gives up on a peer that
broke the protocol, e.g. a message over WIRE_LIMIT). A controller wants the newest observation,
never a queue of old ones, but not ZMQ's CONFLATE: it keeps the newest message whatever it holds,
so a sender of garbage would hide every good observation behind its own. Readers drain a short
queue instead and keep the newest message that decodes. Nothing here blocks a control loop: polls
return at once and read a bounded number of frames, goals are answered a few per tick, and every
message that fails to decode, is out of order or is stamped in the future is dropped and counted
by reason.
"""

from __future__ import annotations

import contextlib
import ipaddress
import itertools
import math
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Generic

import numpy as np
import zmq

from crl.runtime.auth import CurveClient, CurveServer, Keys
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
    bounded,
    decode,
    encode,
    new_session,
)

DEFAULT_HOST, DEFAULT_PORT = "127.0.0.1", 5560
LATEST_QUEUE = 64  # messages a "latest only" reader keeps between polls
# ZMQ drops a peer whose message exceeds this (a memory bound); the decoder's own, smaller limit
# counts what lies between.
WIRE_LIMIT = 16 * MAX_MESSAGE_BYTES
# A reader re-creates a dropped link at once, then at most this often (ZMQ's own reconnect pace).
RELINK_INTERVAL_S = 0.1
# `RobotLink.actions_until`: ZMQ's poll waits whole milliseconds, so the last FINE_POLL_S before a
# deadline polls without blocking every POLL_STEP_S. Not a busy spin: under SCHED_FIFO that would
# hold a core most of each period at 500 Hz, and Linux's real-time throttling (95% of each second
# by default) then stalls the robot for tens of ms.
FINE_POLL_S = 0.0015
POLL_STEP_S = 50e-6
# After a poll has read a good message it reads on at most this long for newer ones queued behind
# it (a robot's backlog after a stall: each decodes in ~20 µs), then leaves the rest queued for the
# next poll: a flood's messages queued behind a robot's sample must not hold back the tick that
# acts on it (measured at 100 Hz on a 2-core VM: 31 bad observations behind each sample took
# 0.6-2 ms to read before the tick could start).
READ_ON_S = 100e-6
# Goal requests answered per tick (a few: each is decoded, validated and answered), and frames
# read per tick (a request of many frames is read across ticks rather than in one).
MAX_GOALS_PER_TICK = 4
GOAL_FRAMES_PER_TICK = 64


class TransportError(RuntimeError):
    """A socket that could not be set up (a port in use, a bad host); one line, what to do."""


EVERY_INTERFACE = "*"  # ZMQ's spelling of 0.0.0.0: every IPv4 interface of this machine


@dataclass(frozen=True)
class Endpoints:
    """Where the five streams live: one host and a base port. The host is checked here, so a bad
    one is a one-line error before anything binds; every interface counts as beyond loopback."""

    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    addresses: tuple[str, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not 1 <= self.port <= 65535 - 4:
            raise TransportError(f"port: {self.port} leaves no room for 5 ports (1..65531)")
        object.__setattr__(self, "addresses", _resolve(self.host))

    def url(self, offset: int) -> str:
        host = "0.0.0.0" if self.host == EVERY_INTERFACE else self.host
        host = f"[{host}]" if ":" in host else host
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
        """Whether only this machine can reach the host (every address it names is loopback)."""
        return all(ipaddress.ip_address(a).is_loopback for a in self.addresses)

    def check_binding(self, keys: Keys | None) -> None:
        """Binding beyond loopback needs keys: TransportError, before anything binds."""
        if keys is None and not self.is_loopback:
            raise TransportError(
                f"--host {self.host}: other machines could reach it, so binding there needs "
                "CURVE keys (--keys DIR; make them with `crl-run keys --out DIR`)")


def _resolve(host: str) -> tuple[str, ...]:
    """The IP addresses `host` names (every interface: the unspecified address)."""
    if host == EVERY_INTERFACE:
        return ("0.0.0.0",)
    if not host:
        raise TransportError("--host: empty; 127.0.0.1 (this machine only) is the default")
    with contextlib.suppress(ValueError):
        return (str(ipaddress.ip_address(host)),)
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError, ValueError):
        raise TransportError(f"--host {host[:80]!r}: not an IP address or a host name that "
                             "resolves (127.0.0.1: this machine only; 0.0.0.0 or :: every "
                             "interface)") from None
    return tuple(sorted({str(info[4][0]) for info in infos}))


def _socket(ctx: zmq.Context[zmq.Socket[bytes]], kind: int, client: CurveClient | None = None
            ) -> zmq.Socket[bytes]:
    """A socket with the transport's limits; `client`: the keys it connects with (CURVE)."""
    s = ctx.socket(kind)
    s.setsockopt(zmq.LINGER, 0)  # closing never waits for a peer that is gone
    s.setsockopt(zmq.MAXMSGSIZE, WIRE_LIMIT)
    s.setsockopt(zmq.IPV6, 1)  # IPv6 hosts (::1) as well as IPv4 ones
    if client is not None:
        client.secure(s)
    return s


def _bind(sock: zmq.Socket[bytes], url: str, endpoints: Endpoints, what: str,
          server: CurveServer | None = None) -> None:
    """Bind `sock`, as a CURVE server if `server` is given (required beyond loopback)."""
    try:
        endpoints.check_binding(server.keys if server is not None else None)
        if server is not None:
            server.secure(sock)
        sock.bind(url)
    except zmq.ZMQError as e:
        sock.close()
        hint = ("is another process using the port? choose another base port with --port"
                if e.errno == zmq.EADDRINUSE else
                f"is {endpoints.host} an address of this machine? see --host")
        raise TransportError(f"cannot bind {what} on {url} ({e}); {hint}") from None
    except TransportError:
        sock.close()
        raise


def _subscriber(ctx: zmq.Context[zmq.Socket[bytes]], latest_only: bool,
                client: CurveClient | None = None) -> zmq.Socket[bytes]:
    """A SUB socket, not yet connected (a monitor must watch it first)."""
    s = _socket(ctx, zmq.SUB, client)
    # A control stream's queue only needs to span one tick of messages; ZMQ drops beyond it.
    s.setsockopt(zmq.RCVHWM, LATEST_QUEUE if latest_only else 10_000)
    s.setsockopt(zmq.SUBSCRIBE, b"")
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


_MONITOR_IDS = itertools.count()  # one inproc address per monitor, never reused in a process


def _payload(frame: zmq.Frame) -> bytes | memoryview:
    """A received frame for the decoder: small ones as bytes (msgpack parses them faster than a
    view), larger ones as a view, never copied (the decoder refuses them by their length)."""
    return frame.bytes if len(frame) <= MAX_MESSAGE_BYTES else frame.buffer


class Reader(Generic[M]):
    """A SUB socket of one message kind; `poll` decodes what is pending, drops and counts the bad
    and the out-of-order, and returns the newest good message (or None).

    A poll reads at most as many frames as the socket queues messages (its RCVHWM), so no sender
    can hold it longer; a message of several frames is read whole, across polls if it must, and
    dropped as "multipart". The link heals: ZMQ drops a connection for good when its peer breaks
    the protocol (a message over WIRE_LIMIT), so any dropped connection re-creates the socket,
    which connects again (counted in `reconnects`; a restarted peer counts too).
    """

    def __init__(self, ctx: zmq.Context[zmq.Socket[bytes]], url: str, cls: type[M],
                 latest_only: bool, client: CurveClient | None = None):
        self.ctx, self.url, self.latest_only = ctx, url, latest_only
        self.cls: type[M] = cls
        self.client = client  # CURVE keys: a re-created socket must connect with them too
        self.guard = SequenceGuard(follow_live=True)  # one sender: a robot, or the runtime
        self.counters = Counters()
        self.accepted = 0  # good messages read (the newest of a poll and those it superseded)
        self.reconnects = 0
        self._relinked = -math.inf  # monotonic time of the last re-creation
        self._relink_at = math.inf  # when a dropped connection is re-created
        self._budget = 0  # frames the current poll may still read
        self._open()

    def _open(self) -> None:
        """Create the socket, connected, and the monitor that reports its connection dropping."""
        self.socket = _subscriber(self.ctx, self.latest_only, self.client)
        self._frames_per_poll = int(self.socket.getsockopt(zmq.RCVHWM))
        self._monitor = self.socket.get_monitor_socket(
            zmq.EVENT_DISCONNECTED, addr=f"inproc://crl-reader-{next(_MONITOR_IDS)}")
        # Watched before it connects: a handshake refused at once (a peer holding other CURVE
        # keys, or none) drops the connection for good, and that drop must not go unseen.
        self.socket.connect(self.url)
        self._parts = 0  # frames read so far of a message of several frames

    def _heal(self) -> None:
        """Re-create the socket once its connection dropped (at most every RELINK_INTERVAL_S, so
        a peer that keeps breaking the protocol cannot make it spin)."""
        while int(self._monitor.getsockopt(zmq.EVENTS)) & zmq.POLLIN:  # cheaper than a failed recv
            self._monitor.recv_multipart()
            self._relink_at = min(self._relink_at, self._relinked + RELINK_INTERVAL_S)
        if self._relink_at == math.inf or time.monotonic() < self._relink_at:
            return
        now = time.monotonic()
        self.socket.disable_monitor()
        self._monitor.close(linger=0)
        self.socket.close(linger=0)
        self.reconnects += 1
        self._relinked, self._relink_at = now, math.inf
        self._open()

    def counts(self) -> dict[str, int]:
        return {**self.counters.to_dict(), "reconnects": self.reconnects}

    def _next(self, stop: float = math.inf) -> M | None:
        """The next good pending message, dropping and counting bad ones; None when none is
        pending, this poll's frames are spent, or it is `stop` (monotonic clock) after this poll
        read its first frame."""
        while self._budget > 0:
            if self._budget < self._frames_per_poll and time.monotonic() >= stop:
                return None
            try:
                frame = self.socket.recv(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return None
            self._budget -= 1
            if frame.more:
                self._parts += 1
                continue
            self.counters.received += 1
            if self._parts:
                self._parts = 0
                self.counters.drop("multipart")
                continue
            try:
                msg = decode(_payload(frame), self.cls)
                self.guard.check(msg)
            except MessageError as e:
                self.counters.drop(e.reason)
                continue
            except Exception:  # a decoder bug must not reach the loop: counted, dropped
                self.counters.drop("internal")
                continue
            self.guard.record(msg)
            self.accepted += 1
            return msg
        return None

    def poll(self, timeout_ms: int = 0, until: float = math.inf) -> M | None:
        """The newest good message pending (waiting up to `timeout_ms` for one), or None.

        Reading is bounded in time as well as in frames: it stops at `until` (monotonic clock;
        a caller's deadline) once it has read a frame, and READ_ON_S after it read a good
        message. What it leaves stays queued, in order, for the next poll."""
        newest = None
        if not timeout_ms or self.socket.poll(timeout_ms):
            self._budget = self._frames_per_poll
            stop = until
            while (msg := self._next(stop)) is not None:
                newest = msg
                stop = min(stop, time.monotonic() + READ_ON_S)
        self._heal()
        return newest

    def drain(self, timeout_ms: int = 0) -> list[M]:
        """Every good message pending, in order (for streams read in full, e.g. telemetry)."""
        out: list[M] = []
        if not timeout_ms or self.socket.poll(timeout_ms):
            self._budget = self._frames_per_poll
            while (msg := self._next()) is not None:
                out.append(msg)
        self._heal()
        return out


class Writer:
    """A bound PUB socket that stamps and numbers what it sends."""

    def __init__(self, ctx: zmq.Context[zmq.Socket[bytes]], url: str, endpoints: Endpoints,
                 what: str, server: CurveServer | None = None):
        self.socket = _socket(ctx, zmq.PUB)
        self.socket.setsockopt(zmq.SNDHWM, 16)
        _bind(self.socket, url, endpoints, what, server)

    def send(self, msg: Message) -> None:
        # zmq.Again: no subscriber keeping up; PUB drops, as it would anyway.
        with contextlib.suppress(zmq.Again):
            self.socket.send(encode(msg), zmq.NOBLOCK)


class Stamper:
    """Session id and sequence numbers for one sender, stamps from its wall clock."""

    def __init__(self, wall_clock: Callable[[], float] = time.time) -> None:
        self.session = new_session()
        self.seq = 0
        self.wall_clock = wall_clock

    def next(self) -> tuple[int, int, float]:
        self.seq += 1
        return self.session, self.seq, self.wall_clock()


class RobotLink:
    """The robot's side: publishes observations and telemetry, reads the newest action."""

    def __init__(self, endpoints: Endpoints, keys: Keys | None = None,
                 wall_clock: Callable[[], float] = time.time):
        """`keys` (the robot's): serve observations and telemetry to authorized keys only, and
        take actions only from the runtime's key. `wall_clock` stamps what it sends (a robot's
        own clock)."""
        self.endpoints = endpoints
        endpoints.check_binding(keys)
        client = keys.client("runtime") if keys is not None else None
        self.ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self.server = CurveServer(self.ctx, keys) if keys is not None else None
        try:
            self._obs = Writer(self.ctx, endpoints.observations, endpoints, "observations",
                               self.server)
            self._tel = Writer(self.ctx, endpoints.telemetry, endpoints, "telemetry", self.server)
        except TransportError:
            self.close()
            raise
        self._actions: Reader[Action] = Reader(self.ctx, endpoints.actions, Action, True, client)
        self.stamper = Stamper(wall_clock)

    @property
    def counters(self) -> dict[str, int]:
        return {**self._actions.counts(),
                "refused_peers": self.server.refused if self.server is not None else 0}

    def publish_observation(self, obs: Observation) -> None:
        self._obs.send(obs)

    def publish_telemetry(self, tel: Telemetry) -> None:
        self._tel.send(tel)

    def poll_action(self, timeout_ms: int = 0) -> Action | None:
        """The newest good action, waiting up to `timeout_ms` for one to arrive."""
        return self._actions.poll(timeout_ms)

    def actions_until(self, deadline: float) -> Iterator[tuple[Action, float]]:
        """Each good action as it arrives until `deadline` (time.monotonic), with when it came
        (as a driver takes a command). ZMQ's poll waits whole milliseconds, so the last
        FINE_POLL_S polls without blocking every POLL_STEP_S: an arrival is timed to about
        0.1 ms and the deadline kept as closely."""
        while (remaining := deadline - time.monotonic()) > 0:
            block_ms = int((remaining - FINE_POLL_S) * 1000)
            if block_ms >= 1:
                action = self.poll_action(block_ms)
            elif (action := self.poll_action()) is None:
                time.sleep(min(remaining, POLL_STEP_S))
            if action is not None:
                yield action, time.monotonic()

    def close(self) -> None:
        if self.server is not None:
            self.server.close()  # its thread's socket goes before the context
        self.ctx.destroy(linger=0)


GoalHandler = Callable[[Goal], tuple[bool, str]]


class RuntimeLink:
    """The runtime's side: reads the newest observation, answers goals, publishes actions and
    status."""

    def __init__(self, endpoints: Endpoints, keys: Keys | None = None):
        """`keys` (the runtime's): serve actions, status and goals to authorized keys only, and
        take observations only from the robot's key."""
        self.endpoints = endpoints
        endpoints.check_binding(keys)
        client = keys.client("robot") if keys is not None else None
        self.ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self.server = CurveServer(self.ctx, keys) if keys is not None else None
        try:
            self._actions = Writer(self.ctx, endpoints.actions, endpoints, "actions", self.server)
            self._status = Writer(self.ctx, endpoints.status, endpoints, "status", self.server)
            self._goals = _socket(self.ctx, zmq.REP)
            _bind(self._goals, endpoints.goals, endpoints, "goals", self.server)
        except TransportError:
            self.close()
            raise
        self._obs: Reader[Observation] = Reader(self.ctx, endpoints.observations, Observation,
                                                True, client)
        self.goal_counters = Counters()
        self._goal_guard = SequenceGuard()
        self._request: zmq.Frame | None = None  # the first frame of a request being read
        self._request_frames = 0
        self.stamper = Stamper()

    @property
    def counters(self) -> dict[str, int]:
        return {**{f"obs_{k}": v for k, v in self._obs.counts().items()},
                **{f"goal_{k}": v for k, v in self.goal_counters.to_dict().items()},
                "refused_peers": self.server.refused if self.server is not None else 0}

    def poll_observation(self, until: float = math.inf) -> Observation | None:
        """The newest good observation pending, reading until `until` at most (`Reader.poll`)."""
        return self._obs.poll(until=until)

    @property
    def observations_accepted(self) -> int:
        """Good observations read so far (each counts, also one a newer superseded)."""
        return self._obs.accepted

    def wait_observation(self, timeout_s: float) -> None:
        """Block until a message is pending on the observation socket, or the timeout (whole
        milliseconds, at least one; none beyond it)."""
        self._obs.socket.poll(max(1, int(timeout_s * 1000)))

    def serve_goals(self, handler: GoalHandler) -> None:
        """Answer pending goal requests in arrival order, each with its own reply (a REP socket
        must answer every request), at most MAX_GOALS_PER_TICK and GOAL_FRAMES_PER_TICK frames a
        call: the rest wait in ZMQ's queue, fair-queued across senders, for the next ticks. The
        last goal accepted is the one held. Nothing raises: every failure is a counted refusal."""
        frames = answered = 0
        while answered < MAX_GOALS_PER_TICK and frames < GOAL_FRAMES_PER_TICK:
            try:
                frame = self._goals.recv(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            frames += 1
            self._request_frames += 1
            if self._request is None:
                self._request = frame
            if frame.more:  # the rest of a request of several frames follows (read, discarded)
                continue
            reply = self._answer(self._request, self._request_frames, handler)
            self._request, self._request_frames = None, 0
            try:
                self._goals.send(reply, zmq.NOBLOCK)
            except zmq.ZMQError:  # the peer is gone or not reading: its reply is dropped
                self.goal_counters.drop("internal")
            answered += 1

    def _answer(self, request: zmq.Frame, frames: int, handler: GoalHandler) -> bytes:
        """The encoded reply to one whole request; a goal is remembered once the handler takes
        it, so a refused goal (out of the box, far in the future) locks nothing out."""
        self.goal_counters.received += 1
        try:
            if frames > 1:
                raise MessageError("multipart", f"{frames} frames; a goal is one")
            goal = decode(_payload(request), Goal)
            self._goal_guard.check(goal)
            accepted, reason = handler(goal)
            if accepted:
                self._goal_guard.record(goal)
        except MessageError as e:
            self.goal_counters.drop(e.reason)
            accepted, reason = False, str(e)
        except Exception as e:  # a handler's bug must not stop the loop or leave REP unanswered
            self.goal_counters.drop("internal")
            accepted, reason = False, f"internal: the goal failed ({type(e).__name__})"
        session, seq, stamp = self.stamper.next()
        try:
            return encode(GoalReply(session, seq, stamp, accepted, bounded(reason)))
        except Exception:
            self.goal_counters.drop("internal")
            return encode(GoalReply(session, seq, stamp, False, "internal: no reply encoded"))

    def publish_action(self, action: Action) -> None:
        self._actions.send(action)

    def publish_status(self, stats: dict[str, float | int | str | bool]) -> None:
        session, seq, stamp = self.stamper.next()
        self._status.send(Status(session, seq, stamp, stats))

    def close(self) -> None:
        if self.server is not None:
            self.server.close()  # its thread's socket goes before the context
        self.ctx.destroy(linger=0)


def send_goal(endpoints: Endpoints, values: list[float], frame: str,
              timeout_s: float = 2.0, keys: Keys | None = None) -> GoalReply:
    """Send one goal to a running runtime and return its answer (TransportError on timeout; a
    runtime that refuses `keys` never answers)."""
    client = keys.client("runtime") if keys is not None else None
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    try:
        sock = _socket(ctx, zmq.REQ, client)
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


def telemetry_reader(ctx: zmq.Context[zmq.Socket[bytes]], endpoints: Endpoints,
                     keys: Keys | None = None) -> Reader[Telemetry]:
    """Every telemetry message, in order (for scoring a closed loop); `keys`: a CURVE client of
    the robot."""
    return Reader(ctx, endpoints.telemetry, Telemetry, latest_only=False,
                  client=keys.client("robot") if keys is not None else None)


def status_reader(ctx: zmq.Context[zmq.Socket[bytes]], endpoints: Endpoints,
                  keys: Keys | None = None) -> Reader[Status]:
    """The runtime's status; `keys`: a CURVE client of the runtime."""
    return Reader(ctx, endpoints.status, Status, latest_only=True,
                  client=keys.client("runtime") if keys is not None else None)


def action_reader(ctx: zmq.Context[zmq.Socket[bytes]], endpoints: Endpoints,
                  latest_only: bool = False, keys: Keys | None = None) -> Reader[Action]:
    """The runtime's actions as a robot (or a test watching it) sees them; `keys`: a CURVE
    client of the runtime."""
    return Reader(ctx, endpoints.actions, Action, latest_only=latest_only,
                  client=keys.client("runtime") if keys is not None else None)
