"""Shared pieces of the robot-side tests: a reacher policy spec built by hand (no jax, so these
tests also run in the robot's Python 3.10 venv), small exported ONNX policies, observations."""

from __future__ import annotations

import hashlib
import itertools
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np

from crl.core.spec import ActionSpec, Field, GoalSpec, NetworkSpec, PolicySpec, Provenance
from crl.export.onnx_export import export_actor, random_params
from crl.runtime import robot_config
from crl.runtime.messages import Observation

REACHER_XML = robot_config.ASSETS / "reacher.xml"
JOINTS = ("shoulder", "elbow")
LINK1, LINK2, SHOULDER_Z = 0.10, 0.11, 0.02  # reacher.xml's geometry


def reacher_spec(depth: int = 4, width: int = 32, hz: float = 25.0) -> PolicySpec:
    """The reacher's spec as the env writes it (observation fields, goal box, action limits)."""
    return PolicySpec(
        task="reacher",
        observation=(Field("joint_pos", 2, "", "", JOINTS), Field("joint_vel", 2, "", "", JOINTS),
                     Field("site_pos", 3, "", "world"), Field("last_action", 2)),
        goal=GoalSpec((Field("fingertip_xy", 2, "", "world"),), "world", (-0.2, -0.2),
                      (0.2, 0.2)),
        action=ActionSpec(2, JOINTS, "position", (3.14, 2.6), (0.0, 0.0), (-3.14, -2.6),
                          (3.14, 2.6)),
        control_hz=hz,
        success_radius=0.02,
        provenance=Provenance("reacher", hashlib.sha256(REACHER_XML.read_bytes()).hexdigest()),
        network=NetworkSpec(depth, width, 16),
    )


def export_policy(path: Path, spec: PolicySpec | None = None, nan: bool = False,
                  seed: int = 0) -> Path:
    """A random-weights ONNX policy for `spec`; `nan` poisons a weight, so ONNX Runtime itself
    returns NaN actions (the seal is computed over the poisoned weights, so it loads)."""
    spec = spec or reacher_spec()
    params = random_params(spec, seed=seed, critic=False)
    if nan:
        params["actor"]["mean"]["bias"][...] = np.nan
    export_actor(params, spec, path)
    return path


_seq = itertools.count(1)


def observation(q: tuple[float, float] = (0.3, -0.5), qd: tuple[float, float] = (0.0, 0.0),
                names: tuple[str, ...] = ("elbow", "shoulder", "extra"), session: int = 7,
                stamp: float | None = None) -> Observation:
    """A reacher observation with the joints in another order than the spec's and an extra one."""
    values = {"shoulder": (q[0], qd[0]), "elbow": (q[1], qd[1]), "extra": (9.0, 9.0)}
    pos = np.asarray([values[n][0] for n in names])
    vel = np.asarray([values[n][1] for n in names])
    return Observation(session, next(_seq), time.time() if stamp is None else stamp, names, pos,
                       vel)


def fingertip(q: tuple[float, float]) -> np.ndarray:
    a, b = q
    return np.array([LINK1 * np.cos(a) + LINK2 * np.cos(a + b),
                     LINK1 * np.sin(a) + LINK2 * np.sin(a + b), SHOULDER_Z])


def interrupt(*procs: subprocess.Popen[Any] | None, timeout: float = 60) -> tuple[Any, Any]:
    """Ctrl-C each process in turn (None: none) and wait for it to exit; the first one's stdout
    and stderr."""
    outputs = []
    for proc in procs:
        if proc is not None:
            proc.send_signal(signal.SIGINT)
            outputs.append(proc.communicate(timeout=timeout))
    return outputs[0] if outputs else (None, None)
