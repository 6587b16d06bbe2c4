"""A loopback robot for timing the control loop: it publishes a robot's observations at a fixed
rate and timestamps the actions that come back. No physics: the joint states follow a slow sine
around the model's reference pose, so the controller has live data to assemble and check. What
it measures is the loop and the transport (observation stamp → action received, on its own
clock), which is what a robot's computer adds to the policy's latency.

    python -m crl.testbed.loopback_robot --robot reacher --hz 100 --port 5560 --report out.json
"""

from __future__ import annotations

import argparse
import math
import signal
import sys
import threading
import time
from pathlib import Path

import mujoco
import numpy as np

from crl.core.atomic import write_json
from crl.core.latency import summarize
from crl.runtime import robot_config
from crl.runtime.loop import open_realtime
from crl.runtime.messages import Observation, Telemetry
from crl.runtime.transport import Endpoints, RobotLink
from crl.testbed.clock import RobotClock

_SCALAR = (int(mujoco.mjtJoint.mjJNT_HINGE), int(mujoco.mjtJoint.mjJNT_SLIDE))


def run(config_name: str, hz: float, endpoints: Endpoints, stop: threading.Event,
        report: Path | None = None, realtime: bool = False, clock_ppm: float = 0.0
        ) -> dict[str, float | int]:
    """Publish at `hz` on the robot's own clock (`clock_ppm` fast or slow against this
    computer's) until `stop`; the summary (and, with `report`, every latency) at the end."""
    clock = RobotClock(clock_ppm)
    config = robot_config.load(config_name)
    if config.model is None:
        raise robot_config.RobotConfigError(f"{config_name}: the loopback robot needs a model")
    m = mujoco.MjModel.from_xml_path(str(config.model))
    joints = [j for j in range(m.njnt) if m.jnt_type[j] in _SCALAR]
    names = tuple(mujoco.mj_id2name(m, mujoco.mjtObj.mjOBJ_JOINT, j) or f"#{j}" for j in joints)
    q0 = np.asarray([m.qpos0[m.jnt_qposadr[j]] for j in joints])
    floating = any(m.jnt_type[j] == int(mujoco.mjtJoint.mjJNT_FREE) for j in range(m.njnt))
    if realtime:
        link, said = open_realtime(lambda: RobotLink(endpoints, wall_clock=clock.wall))
        print(f"loopback robot: {said}", file=sys.stderr)
    else:
        link = RobotLink(endpoints, wall_clock=clock.wall)
    latencies: list[float] = []
    received = 0
    period = 1.0 / hz
    sent: dict[int, float] = {}  # obs seq → monotonic send time
    print(f"loopback robot: {len(names)} joints at {hz:g} Hz on {endpoints.observations}",
          file=sys.stderr, flush=True)
    try:
        sample = clock.elapsed()  # the samples' times, on the robot's clock
        while not stop.is_set():
            t = time.monotonic()
            phase = 2 * math.pi * 0.2 * t
            session, seq, stamp = link.stamper.next()
            obs = Observation(session, seq, stamp, names, q0 + 0.05 * math.sin(phase),
                              np.full(len(names), 0.05 * math.cos(phase)),
                              *((np.zeros(3), np.array([1.0, 0, 0, 0]), np.zeros(3), np.zeros(3))
                                if floating else ()))
            link.publish_observation(obs)
            sent[seq] = t
            sample += period
            # Take the actions as they arrive, timing each, and send the next sample on time.
            for action, now in link.actions_until(clock.host_time(sample)):
                if action.obs_seq in sent:
                    latencies.append(now - sent[action.obs_seq])
                    received += 1
            latency_ms = latencies[-1] * 1e3 if latencies else math.nan
            session, seq2, stamp = link.stamper.next()
            link.publish_telemetry(Telemetry(session, seq2, stamp, 0, seq, 0, np.zeros(1),
                                             np.zeros(1), latency_ms, math.nan, received,
                                             np.zeros(1)))
            for old in [s for s in sent if s < seq - 100]:
                del sent[old]
    finally:
        link.close()
    lat = np.asarray(latencies) * 1e3 if latencies else np.asarray([math.nan])
    e2e = summarize(lat)
    summary: dict[str, float | int] = {
        "actions_received": received, "end_to_end_p50_ms": e2e["p50"],
        "end_to_end_p99_ms": e2e["p99"], "end_to_end_max_ms": e2e["max"],
    }
    if report is not None:
        write_json(report, {**summary, "end_to_end_ms": [float(x) for x in lat]})
    return summary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--robot", required=True, help="robot config (a task name or a YAML path)")
    p.add_argument("--hz", type=float, required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=5560)
    p.add_argument("--report", type=Path, default=None)
    p.add_argument("--realtime", action="store_true", help="ask for SCHED_FIFO, as a driver would")
    p.add_argument("--clock-ppm", type=float, default=0.0,
                   help="its clock runs this many parts per million fast (negative: slow)")
    args = p.parse_args(argv)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    run(args.robot, args.hz, Endpoints(args.host, args.port), stop, args.report, args.realtime,
        args.clock_ppm)
    return 0


if __name__ == "__main__":
    sys.exit(main())
