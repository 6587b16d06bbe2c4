"""The transport's own round trip: how much of the robot-measured latency (measurement → action
received) ZMQ and the message layer take before any policy runs (issue: the clock-locked loop).

A robot process publishes a sample every period and times the answer; a runtime process answers
each sample as it comes, with no policy between. Two variants, taking turns in rounds so a shared
machine's drift falls on both alike:
- `zmq`: bare pyzmq PUB/SUB on loopback, the sample's 8-byte send time as the message, a blocking
  poll on each side: the floor of two processes and ZMQ's I/O threads on this machine;
- `crl`: `RobotLink` / `RuntimeLink` with real `Observation` / `Action` messages (msgpack, the
  decoder's checks, sequence guards), the robot in `actions_until`, the runtime in
  `wait_observation` + `poll_observation`, as `crl-run serve` and the sim robot wait.
Per variant: the round trip's p50 / p90 / p99 / max; for `crl` also its two legs (the robot's
stamp → the runtime's decoded observation; the runtime's stamp → the robot's received action),
both processes reading this computer's clock. Normal scheduling.

    python bench/transport_floor.py --out bench/results/transport_floor_cpu.json
"""

from __future__ import annotations

import multiprocessing as mp
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zmq
from bench_cli import BenchConfigError, result_context, run_cli

from crl.core.atomic import write_json
from crl.core.latency import summarize
from crl.runtime.bench import device_info, versions
from crl.runtime.messages import Action, Observation
from crl.runtime.transport import Endpoints, RobotLink, RuntimeLink
from crl.testbed.closed_loop import free_base_port

HOST = "127.0.0.1"
JOINTS = tuple(f"joint{i}" for i in range(7))  # the arm's seven: a robot-sized message
# The robot probes every PROBE_S until the runtime (a fresh process) answers, READY_S at most:
# a PUB socket drops what it sends before its subscriber has connected.
PROBE_S = 0.05
READY_S = 60.0
LIFETIME_S = 3600.0  # a runtime process's own limit, should its parent die without stopping it
PERCENTILES = (50, 90, 99)
WARMUP = 20  # samples dropped from the figures: the first connections' and caches' cost


@dataclass
class Config:
    out: Path
    """the JSON results to write"""
    hz: float = 100.0
    """the robot's sample rate"""
    seconds: float = 20.0
    """each variant's time per round"""
    rounds: int = 3
    """rounds, each variant once a round"""


def answer_zmq(port: int, lifetime: float) -> None:
    """The bare runtime: send each sample back as it comes, until terminated."""
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(f"tcp://{HOST}:{port}")
    pub = ctx.socket(zmq.PUB)
    pub.bind(f"tcp://{HOST}:{port + 1}")
    end = time.monotonic() + lifetime
    while time.monotonic() < end:
        if sub.poll(50):
            pub.send(sub.recv())
    ctx.destroy(linger=0)


def sample_zmq(port: int, hz: float, seconds: float) -> dict[str, Any]:
    """The bare robot: a sample every period, each answer timed."""
    ctx = zmq.Context()
    pub = ctx.socket(zmq.PUB)
    pub.bind(f"tcp://{HOST}:{port}")
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(f"tcp://{HOST}:{port + 1}")
    answered = False
    for _ in range(int(READY_S / PROBE_S)):  # until the runtime answers (it may start slowly)
        pub.send(np.float64(0.0).tobytes())
        if answered := bool(sub.poll(int(PROBE_S * 1000))):
            break
    if not answered:
        raise RuntimeError(f"transport_floor: no answer from the bare runtime in {READY_S:g} s")
    period, trips = 1.0 / hz, []
    start = time.monotonic()
    for k in range(int(seconds * hz)):
        deadline = start + (k + 1) * period
        pub.send(np.float64(time.monotonic()).tobytes())
        while (remaining := deadline - time.monotonic()) > 0:
            if sub.poll(max(1, int(remaining * 1000))):
                sent = float(np.frombuffer(sub.recv(), np.float64)[0])
                if sent > 0:  # not a probe's answer
                    trips.append(time.monotonic() - sent)
    ctx.destroy(linger=0)
    return {"round_trip": trips[WARMUP:]}


def answer_crl(port: int, lifetime: float) -> None:
    """crl's runtime side: each observation decoded, an action answering it published, until
    terminated."""
    link = RuntimeLink(Endpoints(HOST, port))
    end = time.monotonic() + lifetime
    while time.monotonic() < end:
        link.wait_observation(0.05)
        obs = link.poll_observation()
        if obs is None:
            continue
        s, seq, stamp = link.stamper.next()
        link.publish_action(Action(s, seq, stamp, obs.joint_names, obs.joint_pos, "position",
                                   False, obs.seq, obs.stamp))
    link.close()


def sample_crl(port: int, hz: float, seconds: float) -> dict[str, Any]:
    """crl's robot side: an observation every period, each action taken as it arrives."""
    link = RobotLink(Endpoints(HOST, port))
    zeros = np.zeros(len(JOINTS))
    answered = False
    for _ in range(int(READY_S / PROBE_S)):  # until the runtime answers (it may start slowly)
        s, seq, stamp = link.stamper.next()
        link.publish_observation(Observation(s, seq, stamp, JOINTS, zeros, zeros))
        if answered := any(True for _ in link.actions_until(time.monotonic() + PROBE_S)):
            break
    if not answered:
        raise RuntimeError(f"transport_floor: no answer from crl's runtime in {READY_S:g} s")
    period, first_seq = 1.0 / hz, link.stamper.seq + 1
    legs: dict[str, list[float]] = {"round_trip": [], "observation_leg": [], "action_leg": []}
    start = time.monotonic()
    for k in range(int(seconds * hz)):
        s, seq, stamp = link.stamper.next()
        link.publish_observation(Observation(s, seq, stamp, JOINTS, zeros, zeros))
        for action, _ in link.actions_until(start + (k + 1) * period):
            if action.obs_seq < first_seq:  # a probe's answer
                continue
            now = time.time()  # the stamps' clock (Stamper's)
            legs["round_trip"].append(now - action.obs_stamp)
            legs["observation_leg"].append(action.stamp - action.obs_stamp)
            legs["action_leg"].append(now - action.stamp)
    link.close()
    return {k: v[WARMUP:] for k, v in legs.items()}


VARIANTS = {"zmq": (answer_zmq, sample_zmq), "crl": (answer_crl, sample_crl)}


def run_variant(name: str, hz: float, seconds: float) -> dict[str, list[float]]:
    answer, sample = VARIANTS[name]
    port = free_base_port(HOST, count=2)
    runtime = mp.get_context("spawn").Process(target=answer, args=(port, LIFETIME_S), daemon=True)
    runtime.start()
    try:
        return sample(port, hz, seconds)
    finally:
        runtime.terminate()
        runtime.join(timeout=10)
        if runtime.is_alive():
            runtime.kill()


def main(config: Config) -> dict[str, Any]:
    if not (config.hz > 0 and config.seconds > 0 and config.rounds >= 1):
        raise BenchConfigError("--hz and --seconds must be positive, --rounds at least 1")
    if config.seconds * config.hz <= 2 * WARMUP:
        raise BenchConfigError(f"--seconds × --hz: at least {2 * WARMUP + 1} samples a run")
    pooled: dict[str, dict[str, list[float]]] = {name: {} for name in VARIANTS}
    for _ in range(config.rounds):
        for name in VARIANTS:
            for leg, values in run_variant(name, config.hz, config.seconds).items():
                pooled[name].setdefault(leg, []).extend(values)
    result = {
        **result_context("transport_floor", device_info(), versions()),
        "config": {"hz": config.hz, "seconds": config.seconds, "rounds": config.rounds,
                   "joints": len(JOINTS), "scheduling": "normal"},
        "variants": {name: {leg: {**summarize(np.asarray(v) * 1e3, PERCENTILES), "samples": len(v)}
                            for leg, v in legs.items()}
                     for name, legs in pooled.items()},
    }
    write_json(config.out, result)
    print(f"wrote {config.out}")
    return result


if __name__ == "__main__":
    run_cli(main, Config, "transport_floor")
