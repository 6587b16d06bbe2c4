"""The runtime's controller and the MuJoCo sim robot stepped in turn in one process: no
transport and no clocks between them, each tick exactly one control period after the last. What
a policy does on the robot behind the runtime's filter, limits and ramps, with nothing of a
loop's timing in it (bench/chained_goals.py, bench/goal_sweep.py); `crl-run closed-loop` runs
the same two as separate processes, in real time."""

from __future__ import annotations

import numpy as np

from crl.runtime.controller import Controller
from crl.runtime.messages import Observation
from crl.testbed.robot import SimRobot, Vector


class Lockstep:
    """A controller and a sim robot, one tick then one control step; `now` is the ticks' clock
    (control periods from 0) and stamps the robot's observations."""

    def __init__(self, controller: Controller, robot: SimRobot):
        self.controller, self.robot = controller, robot
        self.seq, self.now = 0, 0.0

    def observe(self) -> Observation:
        """The robot's (noisy) joint states as the message a robot would send."""
        self.seq += 1
        r = self.robot.observation()
        return Observation(1, self.seq, self.now, r.joint_names, r.joint_pos, r.joint_vel)

    def start(self) -> None:
        """The controller takes the robot's first observation, as `crl-run serve` does before
        its loop."""
        self.controller.start(self.observe(), self.now)

    def reach(self, frame: str, goal: Vector) -> float:
        """Command `goal` and step until the robot's episode ends; the true distance to the
        goal then."""
        self.controller.set_goal(frame, goal)
        while not self.robot.done:
            self.controller.observe(self.observe(), self.now)
            cmd = self.controller.tick(self.now)
            self.robot.apply(self.robot.order(cmd.joints, cmd.values, cmd.kind))
            self.robot.step_control()
            self.now += self.controller.period
        return float(np.linalg.norm(self.robot.achieved_goal() - goal))
