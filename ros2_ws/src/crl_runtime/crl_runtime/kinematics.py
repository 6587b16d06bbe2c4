"""
The achieved goal from joint states, for the marker that shows where the robot's goal point is.

The policy's goal field is named `<site or body>_<axes>`; the point is found by forward
kinematics on the robot config's MJCF (the model the policy was trained on), so the marker
shows what the policy believes it is moving, not a separate estimate.
"""

from __future__ import annotations

import mujoco
import numpy as np
from numpy.typing import NDArray

from crl.runtime.messages import Observation

_SCALAR = (int(mujoco.mjtJoint.mjJNT_HINGE), int(mujoco.mjtJoint.mjJNT_SLIDE))
_FREE = int(mujoco.mjtJoint.mjJNT_FREE)


class GoalPoint:
    """World position of the goal's site (or body) from an observation."""

    def __init__(self, model_path: str, name: str):
        self.model = mujoco.MjModel.from_xml_path(model_path)
        self.data = mujoco.MjData(self.model)
        m = self.model
        self.site = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_SITE, name)
        self.body = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_BODY, name)
        if self.site < 0 and self.body < 0:
            raise ValueError(f"{name!r} is neither a site nor a body of {model_path}")
        # Only the joints between the point and the world move it.
        chain: list[int] = []
        body = int(m.site_bodyid[self.site]) if self.site >= 0 else self.body
        while body > 0:
            chain += range(m.body_jntadr[body], m.body_jntadr[body] + m.body_jntnum[body])
            body = int(m.body_parentid[body])
        self.joints = {mujoco.mj_id2name(m, mujoco.mjtObj.mjOBJ_JOINT, j): int(m.jnt_qposadr[j])
                       for j in chain if m.jnt_type[j] in _SCALAR}
        self.free = [int(m.jnt_qposadr[j]) for j in chain if m.jnt_type[j] == _FREE]

    def position(self, obs: Observation) -> NDArray[np.float64] | None:
        """World position of the point, or None when the observation lacks a joint it needs."""
        index = {n: i for i, n in enumerate(obs.joint_names)}
        d = self.data
        for name, adr in self.joints.items():
            if name not in index:
                return None
            d.qpos[adr] = obs.joint_pos[index[name]]
        for adr in self.free:
            if obs.base_pos is None or obs.base_quat is None:
                return None
            d.qpos[adr:adr + 3] = obs.base_pos
            d.qpos[adr + 3:adr + 7] = obs.base_quat
        mujoco.mj_kinematics(self.model, d)
        xpos = d.site_xpos[self.site] if self.site >= 0 else d.xpos[self.body]
        return np.asarray(xpos, dtype=np.float64).copy()
