"""Observation assembly: what a robot measures → the policy's observation vector, in spec order.

Each spec field has a source (`crl.runtime.robot_config`): joint states picked by joint name
(any order, extra joints ignored), the base pose and twist from odometry, a site position derived
by MuJoCo forward kinematics from the joint angles (on the robot's own MJCF), or the controller's
previous command. `required(...)` says up front which joints and base fields a robot must send,
so a robot that lacks one is refused at start, by name, rather than fed zeros.
"""

from __future__ import annotations

from dataclasses import dataclass

import mujoco
import numpy as np
from numpy.typing import NDArray

from crl.core.spec import PolicySpec
from crl.runtime.messages import Observation
from crl.runtime.robot_config import BASE_SOURCES, RobotConfig, RobotConfigError

_FREE = int(mujoco.mjtJoint.mjJNT_FREE)
_SCALAR = (int(mujoco.mjtJoint.mjJNT_HINGE), int(mujoco.mjtJoint.mjJNT_SLIDE))
_BASE_FIELDS = {"base_position": "base_pos", "base_orientation": "base_quat",
                "base_linear_velocity": "base_lin_vel", "base_angular_velocity": "base_ang_vel",
                "base_gravity": "base_quat"}


class ObservationError(ValueError):
    """An observation that lacks what the policy needs; the message names the joint or field."""


@dataclass(frozen=True)
class Requirements:
    joints: tuple[str, ...]
    base: tuple[str, ...]  # Observation attribute names (base_pos, base_quat, ...)


class ForwardKinematics:
    """Site positions from joint angles (and the base pose, for a floating base) on the MJCF."""

    def __init__(self, model_path: str, sites: list[str]):
        self.model = mujoco.MjModel.from_xml_path(model_path)
        self.data = mujoco.MjData(self.model)
        m = self.model
        self.site_ids = {}
        joints: set[int] = set()
        for site in sites:
            sid = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_SITE, site)
            if sid < 0:
                raise RobotConfigError(f"observation: forward_kinematics site {site!r} is not in "
                                       f"{model_path}")
            self.site_ids[site] = sid
            body = int(m.site_bodyid[sid])
            while body > 0:  # every joint between the site and the world moves it
                joints.update(range(m.body_jntadr[body], m.body_jntadr[body] + m.body_jntnum[body]))
                body = int(m.body_parentid[body])
        self.free = [j for j in sorted(joints) if m.jnt_type[j] == _FREE]
        scalar = [j for j in sorted(joints) if m.jnt_type[j] in _SCALAR]
        self.joint_names = tuple(mujoco.mj_id2name(m, mujoco.mjtObj.mjOBJ_JOINT, j) or f"#{j}"
                                 for j in scalar)
        self.qadr = np.asarray([m.jnt_qposadr[j] for j in scalar], dtype=np.int64)

    def site_positions(self, joint_pos: NDArray[np.float64], base_pos: NDArray[np.float64] | None,
                       base_quat: NDArray[np.float64] | None) -> dict[str, NDArray[np.float64]]:
        d = self.data
        d.qpos[self.qadr] = joint_pos
        for j in self.free:
            adr = self.model.jnt_qposadr[j]
            assert base_pos is not None and base_quat is not None  # required() asks for them
            d.qpos[adr:adr + 3] = base_pos
            d.qpos[adr + 3:adr + 7] = base_quat
        mujoco.mj_kinematics(self.model, d)
        return {s: d.site_xpos[i].copy() for s, i in self.site_ids.items()}


def _gravity_in_base(quat: NDArray[np.float64]) -> NDArray[np.float64]:
    """World gravity direction (0, 0, -1) seen from a base with orientation quat (w, x, y, z)."""
    mat = np.empty(9)
    mujoco.mju_quat2Mat(mat, quat / np.linalg.norm(quat))
    return np.asarray(mat.reshape(3, 3).T @ np.array([0.0, 0.0, -1.0]))


class ObservationAssembler:
    """Builds the float32 observation vector from an `Observation` message and the last command."""

    def __init__(self, spec: PolicySpec, config: RobotConfig):
        config.check_against(spec)
        self.spec = spec
        self.config = config
        self.fields = [(f, config.observation[f.name]) for f in spec.observation]
        sites = [s.site for _, s in self.fields if s.kind == "forward_kinematics"]
        self.fk = None
        if sites:
            assert config.model is not None  # check_against refused a config without one
            self.fk = ForwardKinematics(str(config.model), sites)
        joints: list[str] = []
        base: list[str] = []
        for f, src in self.fields:
            if src.kind in ("joint_position", "joint_velocity"):
                joints += [j for j in (f.names or spec.action.joints) if j not in joints]
            elif src.kind in BASE_SOURCES:
                attr = _BASE_FIELDS[src.kind]
                base += [attr] if attr not in base else []
        if self.fk is not None:
            joints += [j for j in self.fk.joint_names if j not in joints]
            if self.fk.free:
                base += [a for a in ("base_pos", "base_quat") if a not in base]
        if spec.action.kind == "position" and config.safety.safe_action == "hold":
            # Holding before the first command means holding the measured pose.
            joints += [j for j in spec.action.joints if j not in joints]
        self.requirements = Requirements(tuple(joints), tuple(base))
        self.out = np.zeros(spec.obs_dim, dtype=np.float32)

    def check(self, obs: Observation) -> None:
        """ObservationError naming the first joint or base field the robot does not send."""
        have = set(obs.joint_names)
        missing = [j for j in self.requirements.joints if j not in have]
        if missing:
            raise ObservationError(f"joint(s) {', '.join(missing)} missing from the robot's joint "
                                   f"states (it sends {', '.join(obs.joint_names) or 'none'})")
        for attr in self.requirements.base:
            if getattr(obs, attr) is None:
                raise ObservationError(f"{attr} missing: the policy needs the robot's base "
                                       "pose/twist (odometry)")
        if obs.base_quat is not None and "base_quat" in self.requirements.base:
            norm = float(np.linalg.norm(obs.base_quat))
            if not 0.5 < norm < 1.5:
                raise ObservationError(f"base_quat has norm {norm:.3g}; expected a unit "
                                       "quaternion (w, x, y, z)")

    def joint_values(self, obs: Observation, names: tuple[str, ...], velocity: bool = False
                     ) -> NDArray[np.float64]:
        """The named joints' positions (or velocities) from a checked observation."""
        index = {n: i for i, n in enumerate(obs.joint_names)}
        order = np.asarray([index[n] for n in names], dtype=np.int64)
        return (obs.joint_vel if velocity else obs.joint_pos)[order]

    def assemble(self, obs: Observation, last_action: NDArray[np.float64]) -> NDArray[np.float32]:
        """The observation vector; `obs` must have passed `check`."""
        out, spec = self.out, self.spec
        slices = spec.observation_slices()
        fk = None
        for f, src in self.fields:
            s = slices[f.name]
            k = src.kind
            if k == "joint_position":
                out[s] = self.joint_values(obs, f.names or spec.action.joints)
            elif k == "joint_velocity":
                out[s] = self.joint_values(obs, f.names or spec.action.joints, velocity=True)
            elif k == "base_gravity":
                assert obs.base_quat is not None
                out[s] = _gravity_in_base(obs.base_quat)
            elif k in BASE_SOURCES:
                value = getattr(obs, _BASE_FIELDS[k])
                assert value is not None
                out[s] = value
            elif k == "forward_kinematics":
                if fk is None:
                    assert self.fk is not None
                    fk = self.fk.site_positions(self.joint_values(obs, self.fk.joint_names),
                                                obs.base_pos, obs.base_quat)
                out[s] = fk[src.site]
            else:  # last_action
                out[s] = last_action
        return np.array(out, dtype=np.float32)
