"""`crl-run closed-loop`: a policy on the MuJoCo sim robot, robot and runtime as separate processes.

It starts `crl-sim robot` and `crl-run serve` on free loopback ports, listens to the sim robot's
telemetry, and at the start of each episode sends that episode's goal to the runtime (the sim
robot draws it with the task's goal sampler from the seed: the spec's goal box bounds the
sampler, but part of the box can lie outside the robot's reach). An episode counts when its goal
was accepted at its first step; it is scored at its last step from the true achieved goal
(success: within the spec's success radius at that step). The commands the robot took, in the
policy's [-1, 1] units, give the oscillation figure (`crl.core.oscillation`), as an evaluation
in simulation reports it. The runtime's own statistics and the robot's end-to-end latency
(observation stamp → action received, on the robot's clock) go in the result too.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
import zmq

from crl.core.latency import summarize
from crl.core.oscillation import NEAR_GOAL_RADII, action_flips, oscillation
from crl.core.spec import PolicySpec
from crl.runtime.auth import Keys, load_keys
from crl.runtime.messages import Telemetry
from crl.runtime.transport import Endpoints, send_goal, status_reader, telemetry_reader

STARTUP_S = 180.0  # the sim robot imports jax and compiles its reset: slow on a small CPU
STALL_S = 10.0  # telemetry comes every control period; this long without any is a stalled robot


class ClosedLoopError(RuntimeError):
    """A closed-loop run that could not finish; the message names the process and its last words."""


LOWEST_PORT = 20000  # above the registered services a robot computer commonly runs
EPHEMERAL_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")
LINUX_EPHEMERAL_RANGE = (32768, 60999)  # the kernel's default, where the file cannot be read


def ephemeral_ports() -> tuple[int, int]:
    """The range the kernel draws a connecting socket's local port from (inclusive)."""
    try:
        low, high = (int(v) for v in EPHEMERAL_RANGE_FILE.read_text().split())
    except (OSError, ValueError):
        return LINUX_EPHEMERAL_RANGE
    return low, high


def free_base_port(host: str = "127.0.0.1", count: int = 5, tries: int = 200) -> int:
    """A base port whose `count` consecutive ports are free now on `host`, outside the ephemeral
    range: there, any connecting socket on the machine may take one of them before the server
    binds it, and a ZMQ peer that retries a connect to a port nobody listens on yet can connect
    to itself, holding the port the server is about to bind."""
    low, high = ephemeral_ports()
    spans = [(a, b) for a, b in ((LOWEST_PORT, low - count), (high + 1, 65536 - count)) if a < b]
    if not spans:
        spans = [(LOWEST_PORT, 65536 - count)]  # an ephemeral range over everything: draw anyway
    rng = random.Random()
    for _ in range(tries):
        base = rng.randrange(*rng.choice(spans))
        socks = []
        try:
            for p in range(base, base + count):
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                socks.append(s)
                s.bind((host, p))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise ClosedLoopError(f"no {count} consecutive free ports found on {host}")


@dataclass
class Episode:
    number: int
    goal: np.ndarray
    accepted: bool
    distances: list[float] = field(default_factory=list)
    commands: list[np.ndarray] = field(default_factory=list)  # [-1, 1], one a step
    near: list[bool] = field(default_factory=list)  # the step's command chosen near the goal


@dataclass
class Process:
    name: str
    popen: subprocess.Popen[bytes]
    log: IO[bytes]

    def tail(self, lines: int = 8) -> str:
        self.log.flush()
        self.log.seek(0)
        text = self.log.read().decode(errors="replace").strip().splitlines()
        return " | ".join(text[-lines:]) or "(no output)"

    def check(self) -> None:
        code = self.popen.poll()
        if code is not None:
            raise ClosedLoopError(f"{self.name} exited with status {code}: {self.tail()}")

    def stop(self, timeout: float = 10.0) -> int:
        return stop_process(self.popen, timeout)


def stop_process(popen: subprocess.Popen[Any], timeout: float = 10.0) -> int:
    """Ctrl-C a process still running, as an operator would, and wait for it; killed if it
    outlasts `timeout`. Its exit status."""
    if popen.poll() is None:
        popen.send_signal(signal.SIGINT)
        try:
            popen.wait(timeout)
        except subprocess.TimeoutExpired:
            popen.kill()
            popen.wait()
    return int(popen.returncode)


def start(name: str, argv: list[str], logdir: Path) -> Process:
    log = open(logdir / f"{name}.log", "w+b")  # noqa: SIM115 (closed by run_closed_loop)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    popen = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                             env=env)
    return Process(name, popen, log)


def run_closed_loop(*, policy: Path, task: str, dr: str, seed: int, goals: int,
                    backend: str = "ort", robot: str | None = None, speed: float = 1.0,
                    spec: PolicySpec, serve_args: tuple[str, ...] = (),
                    keys: Path | None = None, clock_ppm: float = 0.0, realtime: bool = False,
                    on_goal: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Run the closed loop and return the result (see the module docstring). `keys`: a CURVE
    keys folder with all three roles; the scorer is the operator. `clock_ppm`: the sim robot's
    clock runs that fast (negative: slow) against the runtime's. `realtime`: the robot and the
    runtime ask for SCHED_FIFO. `on_goal` gets each goal's result as it is scored."""
    host = "127.0.0.1"
    ep = Endpoints(host, free_base_port(host))
    py = sys.executable
    operator: Keys | None = None
    key_args: tuple[str, ...] = ()
    if keys is not None:  # each process's keys load here first: an error is one line, at once
        load_keys(keys, "robot", ("runtime",))
        load_keys(keys, "runtime", ("robot",))
        operator = load_keys(keys, "operator", ("runtime", "robot"))
        key_args = ("--keys", str(keys))
    with tempfile.TemporaryDirectory(prefix="crl-closed-loop-") as tmp:
        logdir = Path(tmp)
        procs = [
            start("crl-sim robot", [py, "-m", "crl.sim.cli", "robot", task, "--dr", dr,
                                    "--seed", str(seed), "--host", host, "--port", str(ep.port),
                                    "--speed", str(speed), *key_args,
                                    *(("--clock-ppm", str(clock_ppm)) if clock_ppm else ()),
                                    *(("--realtime",) if realtime else ())],
                  logdir),
            start("crl-run serve", [py, "-m", "crl.runtime.cli", "serve", "--policy", str(policy),
                                    "--backend", backend, "--robot", robot or task, "--host",
                                    host, "--port", str(ep.port), "--speed", str(speed),
                                    "--wait", str(STARTUP_S), "--quiet", *key_args,
                                    *(("--realtime",) if realtime else ()), *serve_args],
                  logdir),
        ]
        ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        try:
            result = _score(ctx, ep, procs, goals, spec, operator, on_goal)
        finally:
            ctx.destroy(linger=0)
            codes = {p.name: p.stop() for p in reversed(procs)}
            for p in procs:
                p.log.close()
    result.update(task=task, dr=dr, seed=seed, policy=str(policy), backend=backend, speed=speed,
                  clock_ppm=clock_ppm, realtime=realtime,
                  date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                  exit_codes=codes)
    return result


def _score(ctx: zmq.Context[zmq.Socket[bytes]], ep: Endpoints, procs: list[Process], goals: int,
           spec: PolicySpec, keys: Keys | None,
           on_goal: Callable[[dict[str, Any]], None] | None) -> dict[str, Any]:
    radius, frame = spec.success_radius, spec.goal.frame
    offset, scale = np.asarray(spec.action.offset), np.asarray(spec.action.scale)
    telemetry = telemetry_reader(ctx, ep, keys)
    statuses = status_reader(ctx, ep, keys)
    episodes: dict[int, Episode] = {}
    scored: list[dict[str, Any]] = []
    latencies: list[float] = []  # measurement → action received, at each control step
    applied: list[float] = []  # → taking effect (after the robot's action delay)
    last_status: dict[str, Any] | None = None
    runtime_ready = False
    started = time.monotonic()
    deadline = started + STARTUP_S
    while len(scored) < goals:
        for p in procs:
            p.check()
        status = statuses.poll()
        if status is not None:
            last_status, runtime_ready = dict(status.stats), True
        batch = telemetry.drain(timeout_ms=50)
        if not batch and time.monotonic() > deadline:
            raise ClosedLoopError(
                "no telemetry from the sim robot in time" if not episodes else
                "the sim robot stopped sending telemetry"
                + "; " + "; ".join(f"{p.name}: {p.tail(4)}" for p in procs))
        for tel in batch:
            deadline = time.monotonic() + STALL_S
            e = episodes.get(tel.episode)
            if e is None:
                e = _begin(ep, tel, frame, runtime_ready, keys)
                episodes[tel.episode] = e
            if not np.isnan(tel.action_latency_ms) and runtime_ready:
                latencies.append(tel.action_latency_ms)
            if not np.isnan(tel.action_applied_ms) and runtime_ready:
                applied.append(tel.action_applied_ms)
            if tel.step >= 1:
                before = e.distances[-1] if e.distances else np.inf
                e.distances.append(float(np.linalg.norm(tel.achieved_goal - e.goal)))
                if tel.command.shape == scale.shape:
                    e.commands.append((tel.command - offset) / scale)
                    e.near.append(before <= NEAR_GOAL_RADII * radius)
            if tel.step == tel.episode_length and e.accepted and len(scored) < goals:
                scored.append(_result(e, radius))
                if on_goal is not None:
                    on_goal(scored[-1])
    final = np.asarray([g["final_distance"] for g in scored])
    return {
        "goals": scored,
        "oscillation": oscillation([g["flips"] for g in scored],
                                   [g["flip_chances"] for g in scored]),
        "success_rate": float(np.mean([g["success"] for g in scored])),
        "final_distance_median": float(np.median(final)),
        "time_at_goal_mean": float(np.mean([g["time_at_goal"] for g in scored])),
        "runtime": last_status or {},
        "robot_end_to_end_ms": _latency(latencies),
        "robot_applied_ms": _latency(applied),
        "wall_s": round(time.monotonic() - started, 1),
    }


def _latency(samples_ms: list[float]) -> dict[str, Any]:
    return {**summarize(np.asarray(samples_ms if samples_ms else [np.nan])),
            "samples": len(samples_ms)}


def _begin(ep: Endpoints, tel: Telemetry, frame: str, runtime_ready: bool,
           keys: Keys | None) -> Episode:
    """A new episode: send its goal; it counts only if the runtime was running and took the goal
    at the episode's first step."""
    accepted = False
    if runtime_ready:
        with contextlib.suppress(Exception):
            accepted = send_goal(ep, [float(v) for v in tel.goal], frame, keys=keys).accepted
    return Episode(tel.episode, tel.goal.copy(), accepted and tel.step <= 1)


def _result(e: Episode, radius: float) -> dict[str, Any]:
    d = np.asarray(e.distances)
    flips = chances = 0
    if len(e.commands) > 2:
        f, c = action_flips(np.stack(e.commands), np.asarray(e.near))
        flips, chances = int(f), int(c)
    return {"episode": e.number, "goal": [float(v) for v in e.goal],
            "final_distance": float(d[-1]), "success": bool(d[-1] <= radius),
            "time_at_goal": int((d <= radius).sum()), "steps": len(d), "flips": flips,
            "flip_chances": chances}
