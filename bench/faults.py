"""Fault injection against the real runtime processes (issue 23), shared by the fault suite
(tests/test_faults.py) and the soak (bench/soak.py).

Everything runs as a user would run it, on loopback: `crl-run serve` in its own process, a robot
in another (`crl-sim robot`, or the fault robot below), and this process as the hostile sender
and the observer:

- `FaultRobot`: a robot process (this file run as `python bench/faults.py robot ...`) that binds
  the observation port, publishes a fixed pose at the control rate, and injects what it is sent on
  its stdin (JSON lines of hex frames) between its own observations, a bounded number per period,
  so the runtime's input queue takes every one and each can be counted. Hostile observations can
  only come from the port's binder, hence a robot that does both.
- `ActionWatch` and `StatusWatch`: threads that record every action and the newest status.
- `action_faults`: what the actions show (non-finite or out-of-limit values, the longest gap
  between them, the largest step between consecutive commands).
- Hostile messages: goals and observations of each kind the issue measured, by category, with the
  reason the runtime should count them under.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import queue
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

import msgpack
import numpy as np
import zmq

from crl.runtime.messages import MAX_MESSAGE_BYTES, Action, Goal, Observation, encode, new_session
from crl.runtime.transport import (
    LATEST_QUEUE,
    WIRE_LIMIT,
    Endpoints,
    action_reader,
    status_reader,
)
from crl.testbed import closed_loop

HERE = Path(__file__).resolve()
JOINTS = ("shoulder", "elbow")  # the reacher's, as its robot config names them
# Hostile observations a fault robot sends per control period, beside its own: half the runtime's
# input queue, so a tick that comes a period late still finds every message queued.
INJECT_PER_PERIOD = LATEST_QUEUE // 2 - 1
# The robot's send queue: deep enough for a whole flood (the runtime's queue pushes back through
# TCP, so nothing is dropped on the way).
FLOOD_QUEUE = 1_000_000
FUTURE_S = 5.0  # how far ahead a "future" stamp is (the measurement)
# A flood's goals wait in the runtime's queue (it answers a few a tick) for many seconds: theirs
# are stamped far enough ahead to be still in the future when answered.
QUEUED_FUTURE_S = 3600.0
UNKNOWN_KEYS_BYTES = 60_000  # the goal whose rejection quoted 60 kB of unknown keys
UNKNOWN_KEY_CHARS = 600  # one unknown key's length (msgpack's limit on a string is 1024)
READY_S = 60.0  # a robot or runtime process that says nothing this long has failed to start

Frames = list[bytes]


# -- processes ---------------------------------------------------------------------------------


def serve_process(policy: Path, port: int, log: IO[bytes], *extra: str) -> subprocess.Popen[bytes]:
    """`crl-run serve` on loopback with the reacher's robot config, its output to `log`."""
    return subprocess.Popen(
        [sys.executable, "-m", "crl.runtime.cli", "serve", "--policy", str(policy), "--robot",
         "reacher", "--host", "127.0.0.1", "--port", str(port), "--quiet", *extra],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def sim_robot_process(port: int, seed: int, log: IO[bytes]) -> subprocess.Popen[bytes]:
    """`crl-sim robot reacher` (MuJoCo, held-out DR) on loopback."""
    return subprocess.Popen(
        [sys.executable, "-m", "crl.sim.cli", "robot", "reacher", "--dr", "held-out", "--seed",
         str(seed), "--host", "127.0.0.1", "--port", str(port)],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def stop_process(proc: subprocess.Popen[Any], timeout: float = 20.0) -> int:
    """SIGINT (a clean stop), then SIGKILL if it does not go in `timeout` (a sim robot's jax
    takes a while to let go); the exit status."""
    return closed_loop.stop_process(proc, timeout)


class FaultRobot:
    """A fault robot process (see the module docstring): `session` once it publishes, `inject`
    to send hostile messages through it, `kill` to take it away as a crash would."""

    def __init__(self, port: int, hz: float, pose: Sequence[float], clock_offset: float = 0.0):
        self.pose = tuple(pose)
        self.spawned = time.time()  # before its first observation: a boundary for action_faults
        self.proc = subprocess.Popen(
            [sys.executable, str(HERE), "robot", "--port", str(port), "--hz", str(hz),
             "--clock-offset", str(clock_offset), "--pose", *(str(q) for q in pose)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self._lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self._batches = 0
        ready = self._expect("ready", READY_S)
        self.session = int(ready.split()[1])

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line.strip())

    def _expect(self, word: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self._lines.get(timeout=left)
            except queue.Empty:
                break
            if line.split()[:1] == [word]:
                return line
        err = ""
        if self.proc.poll() is not None and self.proc.stderr is not None:
            err = self.proc.stderr.read()
        raise RuntimeError(f"fault robot: no {word!r} within {timeout:g} s {err[-500:]}")

    def inject(self, messages: Sequence[Frames], timeout: float = 120.0) -> None:
        """Send `messages` (each a list of frames) between the robot's own observations; returns
        once all are handed to ZMQ."""
        self._order({"messages": [[f.hex() for f in m] for m in messages]}, timeout)

    def flood(self, n: int, seed: int, timeout: float = 600.0) -> Counter[str]:
        """`n` bad observations of every category (`bad_observation`), made by the robot itself
        (a flood is too large to hand over); returns how many of each it sent."""
        said = self._order({"flood": n, "seed": seed}, timeout)  # "sent <batch> <counts>"
        return Counter(json.loads(said.split(" ", 2)[2]))

    def _order(self, order: dict[str, Any], timeout: float) -> str:
        self._batches += 1
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"batch": self._batches, **order}) + "\n")
        self.proc.stdin.flush()
        return self._expect("sent", timeout)

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()


def robot_main(port: int, hz: float, pose: Sequence[float], clock_offset: float = 0.0) -> None:
    """The fault robot's process: a fixed pose at `hz`, injecting what stdin hands it; its
    stamps are its clock's, `clock_offset` s from this machine's."""
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    sock = ctx.socket(zmq.PUB)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, FLOOD_QUEUE)
    sock.bind(Endpoints("127.0.0.1", port).observations)
    orders: queue.Queue[dict[str, Any]] = queue.Queue()

    def read_stdin() -> None:
        for line in sys.stdin:
            orders.put(json.loads(line))
        stop.set()  # the harness went away

    threading.Thread(target=read_stdin, daemon=True).start()
    session, seq = new_session(), 0
    pos, vel = np.asarray(pose, dtype=np.float64), np.zeros(len(pose))
    sent: Counter[str] = Counter()

    def messages(order: dict[str, Any]) -> Iterator[Frames]:
        if "messages" in order:
            yield from ([bytes.fromhex(f) for f in m] for m in order["messages"])
            return
        rng = random.Random(order["seed"])
        picks, _ = mixed(list(OBS_CATEGORIES), order["flood"], rng)
        for i, category in enumerate(picks):
            sent[category] += 1
            yield bad_observation(category, rng, session, i + 1, pose)

    print(f"ready {session}", flush=True)
    period, deadline = 1.0 / hz, time.monotonic()
    current: tuple[int, Iterator[Frames]] | None = None
    try:
        while not stop.is_set():
            seq += 1
            sock.send(encode(Observation(session, seq, time.time() + clock_offset, JOINTS, pos,
                                         vel)))
            for _ in range(INJECT_PER_PERIOD):
                if current is None:
                    try:
                        order = orders.get_nowait()
                    except queue.Empty:
                        break
                    current, sent = (order["batch"], messages(order)), Counter()
                frames = next(current[1], None)
                if frames is None:
                    print(f"sent {current[0]} {json.dumps(sent)}", flush=True)
                    current = None
                    continue
                sock.send_multipart(frames)
            deadline += period
            time.sleep(max(0.0, deadline - time.monotonic()))
    finally:
        ctx.destroy(linger=0)


# -- observers ---------------------------------------------------------------------------------


class _Listener(threading.Thread):
    """A thread that reads one of the runtime's streams on its own socket and context until
    closed."""

    def __init__(self, endpoints: Endpoints):
        super().__init__(daemon=True)
        self.endpoints = endpoints
        self.stop = threading.Event()
        self._lock = threading.Lock()

    def run(self) -> None:
        ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        try:
            self.listen(ctx)
        finally:
            ctx.destroy(linger=0)

    def listen(self, ctx: zmq.Context[zmq.Socket[bytes]]) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self.stop.set()
        self.join(5)


class ActionWatch(_Listener):
    """Every action the runtime publishes, as a robot receives it."""

    def __init__(self, endpoints: Endpoints):
        super().__init__(endpoints)
        self.actions: list[Action] = []

    def listen(self, ctx: zmq.Context[zmq.Socket[bytes]]) -> None:
        reader = action_reader(ctx, self.endpoints)
        while not self.stop.is_set():
            got = reader.drain(50)
            with self._lock:
                self.actions += got

    def since(self, wall: float) -> list[Action]:
        """The actions stamped at or after `wall` (time.time())."""
        with self._lock:
            return [a for a in self.actions if a.stamp >= wall]


class StatusWatch(_Listener):
    """The newest status the runtime published (its statistics and link counters), and the
    history of its misses: (wall clock, misses so far)."""

    def __init__(self, endpoints: Endpoints):
        super().__init__(endpoints)
        self.stats: dict[str, Any] = {}
        self.misses: list[tuple[float, int]] = []

    def listen(self, ctx: zmq.Context[zmq.Socket[bytes]]) -> None:
        reader = status_reader(ctx, self.endpoints)
        while not self.stop.is_set():
            msg = reader.poll(50)
            if msg is not None:
                with self._lock:
                    self.stats = dict(msg.stats)
                    self.misses.append((msg.stamp, int(msg.stats.get("misses", 0))))

    def latest(self) -> dict[str, Any]:
        with self._lock:
            return dict(self.stats)

    def wait_until(self, ready: Callable[[dict[str, Any]], bool], timeout: float
                   ) -> dict[str, Any]:
        """The first status for which `ready` holds (or the newest one at the timeout)."""
        deadline = time.monotonic() + timeout
        while True:
            stats = self.latest()
            if (stats and ready(stats)) or time.monotonic() > deadline:
                return stats
            time.sleep(0.05)


def dropped(stats: dict[str, Any], link: str) -> dict[str, int]:
    """The messages a link (`obs` or `goal`) dropped, by reason, from a status."""
    prefix = f"{link}_dropped_"
    return {k[len(prefix):]: int(v) for k, v in stats.items() if k.startswith(prefix)}


def delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    """What grew between two counts, by key (only what did)."""
    return {k: v - before.get(k, 0) for k, v in after.items() if v != before.get(k, 0)}


def action_faults(actions: Sequence[Action], low: Sequence[float], high: Sequence[float],
                  robots: Sequence[float] = ()) -> dict[str, Any]:
    """What a run of actions shows: how many are non-finite or outside the limits, the longest
    gap between consecutive ones (their stamps: the runtime's clock, not this observer's
    wake-ups) and the largest change of any joint's command between consecutive ones sent to
    the same robot. `robots`: when (wall clock) each robot after the first was started; an action
    is sent to the robot whose observation it answers (its `obs_stamp`), and the step to a new
    robot's first command is measured from where that robot is (`first_commands`), not from the
    command the previous robot was sent."""
    if not actions:
        return {"actions": 0, "nonfinite": 0, "out_of_limit": 0, "max_gap_s": math.inf,
                "max_step": 0.0, "safe": 0}
    values = np.asarray([a.values for a in actions], dtype=np.float64)
    finite = np.isfinite(values).all(axis=1)
    lo, hi = np.asarray(low), np.asarray(high)
    outside = ((values < lo - 1e-9) | (values > hi + 1e-9)).any(axis=1) & finite
    stamps = np.asarray([a.stamp for a in actions])
    robot = np.searchsorted(np.asarray(sorted(robots)), [a.obs_stamp for a in actions])
    same = robot[1:] == robot[:-1]
    steps = np.abs(np.diff(values, axis=0))[same]
    return {"actions": len(actions), "nonfinite": int((~finite).sum()),
            "out_of_limit": int(outside.sum()),
            "max_gap_s": float(np.diff(stamps).max()) if len(stamps) > 1 else 0.0,
            "max_step": float(np.nanmax(steps)) if steps.size else 0.0,
            "safe": sum(a.safe for a in actions)}


def largest_gaps(actions: Sequence[Action], n: int) -> list[tuple[float, float]]:
    """The `n` longest gaps between consecutive actions: (stamp of the action that ended it, gap
    in seconds), longest first."""
    stamps = np.asarray([a.stamp for a in actions])
    if len(stamps) < 2:
        return []
    gaps = np.diff(stamps)
    top = np.argsort(gaps)[::-1][:n]
    return [(float(stamps[i + 1]), float(gaps[i])) for i in top]


def first_commands(actions: Sequence[Action], robots: Sequence[float]) -> list[Action | None]:
    """The first action answering each robot started at `robots` (wall clock; None if none)."""
    return [next((a for a in actions if a.obs_stamp >= t), None) for t in robots]


# -- hostile messages --------------------------------------------------------------------------


def goal_bytes(values: Sequence[float], *, session: int, seq: int, stamp: float | None = None,
               frame: str = "world") -> bytes:
    return encode(Goal(session, seq, time.time() if stamp is None else stamp, frame,
                       np.asarray(values, dtype=np.float64)))


def observation_bytes(pos: Sequence[float], *, session: int, seq: int,
                      stamp: float | None = None) -> bytes:
    q = np.asarray(pos, dtype=np.float64)
    return encode(Observation(session, seq, time.time() if stamp is None else stamp, JOINTS, q,
                              np.zeros(len(q))))


def with_unknown_keys(message: bytes, total_bytes: int = UNKNOWN_KEYS_BYTES) -> bytes:
    """`message` with unknown keys adding up to `total_bytes` (under the message limit): the
    decoder's refusal would quote them all."""
    raw = msgpack.unpackb(message)
    for i in range(total_bytes // UNKNOWN_KEY_CHARS):
        raw[f"{i:04d}" + "k" * (UNKNOWN_KEY_CHARS - 4)] = 0
    data: bytes = msgpack.packb(raw)
    assert len(data) < MAX_MESSAGE_BYTES
    return data


def with_field(message: bytes, **fields: Any) -> bytes:
    return bytes(msgpack.packb({**msgpack.unpackb(message), **fields}))


# Categories of bad input, each with the reasons the runtime may count it under (a link's drop
# reason, or `rejected`: the controller refused a well-formed goal or observation).
GOAL_CATEGORIES: dict[str, tuple[str, ...]] = {
    "garbage": ("malformed", "schema"),
    "two_frames": ("multipart",),
    "unknown_keys": ("schema",),
    "nonfinite": ("nonfinite",),
    "oversized": ("oversized",),
    "future_stamp": ("future",),
    "huge_stamp": ("future", "rejected"),  # 1e308, values outside the box
    "outside_box": ("rejected",),
    "wrong_frame": ("rejected",),
    "wrong_size": ("rejected",),
}
OBS_CATEGORIES: dict[str, tuple[str, ...]] = {
    "garbage": ("malformed", "schema"),
    "truncated": ("malformed",),
    "wrong_kind": ("schema",),
    "nonfinite": ("nonfinite",),
    "size_mismatch": ("size",),
    "oversized": ("oversized",),
    "two_frames": ("multipart",),
    # Another sender's, stamped 5 s ahead: refused as another session while the robot sends. A
    # stamp ahead refuses nothing on a one-sender stream (a robot's clock may be off by any
    # amount; `crl.runtime.messages`).
    "future_stamp": ("out_of_order",),
    "replay": ("out_of_order",),
}


def bad_goal(category: str, rng: random.Random, session: int, seq: int) -> Frames:
    """One bad goal message (frames) of `category`, from sender `session`."""
    inside = [rng.uniform(-0.15, 0.15), rng.uniform(-0.15, 0.15)]
    good = goal_bytes(inside, session=session, seq=seq)
    if category == "garbage":
        return [rng.randbytes(rng.randrange(1, 64))]
    if category == "two_frames":
        return [good, good]
    if category == "unknown_keys":
        return [with_unknown_keys(good)]
    if category == "nonfinite":
        return [with_field(good, values=[math.nan, 0.0])]
    if category == "oversized":
        return [b"\x00" * (MAX_MESSAGE_BYTES + 1 + rng.randrange(1024))]
    if category == "future_stamp":
        return [goal_bytes(inside, session=session, seq=seq,
                           stamp=time.time() + QUEUED_FUTURE_S)]
    if category == "huge_stamp":
        return [goal_bytes([1.0, 1.0], session=session, seq=seq, stamp=1e308)]
    if category == "outside_box":
        return [goal_bytes([0.5, rng.uniform(-1, 1)], session=session, seq=seq)]
    if category == "wrong_frame":
        return [goal_bytes(inside, session=session, seq=seq, frame="map")]
    if category == "wrong_size":
        return [goal_bytes([*inside, 0.0], session=session, seq=seq)]
    raise ValueError(f"unknown goal category {category!r}")


def bad_observation(category: str, rng: random.Random, robot_session: int, seq: int,
                    pose: Sequence[float]) -> Frames:
    """One bad observation message (frames) of `category`; `replay` repeats an old number of the
    robot's own session, `future_stamp` comes from a sender of its own."""
    good = observation_bytes(pose, session=new_session(), seq=seq)
    if category == "garbage":
        return [rng.randbytes(rng.randrange(1, 64))]
    if category == "truncated":
        return [good[:rng.randrange(1, len(good) - 1)]]
    if category == "wrong_kind":
        return [with_field(good, kind="goal")]
    if category == "nonfinite":
        return [with_field(good, joint_pos=[math.inf, 0.0])]
    if category == "size_mismatch":
        return [with_field(good, joint_vel=[0.0])]
    if category == "oversized":
        return [b"\x00" * (MAX_MESSAGE_BYTES + 1 + rng.randrange(1024))]
    if category == "two_frames":
        return [good, good]
    if category == "future_stamp":
        return [observation_bytes(pose, session=new_session(), seq=seq,
                                  stamp=time.time() + FUTURE_S)]
    if category == "replay":
        return [observation_bytes(pose, session=robot_session, seq=1)]
    raise ValueError(f"unknown observation category {category!r}")


def over_wire_limit() -> Frames:
    """One message ZMQ itself refuses (over the sockets' MAXMSGSIZE): it cuts the connection."""
    return [b"\x00" * (WIRE_LIMIT + 1)]


def mixed(categories: Sequence[str], n: int, rng: random.Random
          ) -> tuple[list[str], Counter[str]]:
    """`n` categories drawn evenly at random, and how many of each."""
    picks = [categories[i % len(categories)] for i in range(n)]
    rng.shuffle(picks)
    return picks, Counter(picks)


def send_goals(endpoints: Endpoints, messages: Iterable[Frames], timeout: float
               ) -> tuple[int, list[bytes]]:
    """Queue `messages` on the goal port as fast as it takes them (a DEALER, so many wait at
    once) and collect the answers; returns (sent, answers) after all are answered or `timeout`."""
    pending = iter(messages)
    frames: Frames | None = next(pending, None)
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    try:
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(endpoints.goals)
        answers: list[bytes] = []
        sent = 0
        deadline = time.monotonic() + timeout
        while (frames is not None or len(answers) < sent) and time.monotonic() < deadline:
            while frames is not None:
                try:
                    sock.send_multipart([b"", *frames], zmq.NOBLOCK)
                except zmq.Again:
                    break
                sent += 1
                frames = next(pending, None)
            if sock.poll(10):
                while True:
                    try:
                        answers.append(sock.recv_multipart(zmq.NOBLOCK)[-1])
                    except zmq.Again:
                        break
        return sent, answers
    finally:
        ctx.destroy(linger=0)


def request_goal(endpoints: Endpoints, frames: Frames, timeout: float = 5.0) -> bytes | None:
    """One goal request (REQ, as `crl-run goal` sends it); its raw answer or None at the
    timeout."""
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    try:
        sock = ctx.socket(zmq.REQ)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(endpoints.goals)
        sock.send_multipart(frames)
        if not sock.poll(max(1, round(timeout * 1000))):
            return None
        return sock.recv_multipart()[-1]
    finally:
        ctx.destroy(linger=0)


@contextlib.contextmanager
def watching(endpoints: Endpoints) -> Iterator[tuple[ActionWatch, StatusWatch]]:
    actions, status = ActionWatch(endpoints), StatusWatch(endpoints)
    actions.start()
    status.start()
    try:
        yield actions, status
    finally:
        actions.close()
        status.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="the fault robot (see bench/faults.py)")
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("robot", help="publish a fixed pose, inject what stdin hands over")
    r.add_argument("--port", type=int, required=True)
    r.add_argument("--hz", type=float, required=True)
    r.add_argument("--pose", type=float, nargs="+", required=True)
    r.add_argument("--clock-offset", type=float, default=0.0, help="s ahead of this machine")
    args = p.parse_args(argv)
    robot_main(args.port, args.hz, args.pose, args.clock_offset)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
