"""A simulated robot for closed-loop tests of the runtime: plain MuJoCo playing the real robot.

`SimRobot` runs one task's MJCF on MuJoCo's C library (CPU, float64), one instance. Each
episode's start, goal and domain-randomization `Draw` come from the MJX env's own jitted
`reset`, so `held-out` here means exactly the dynamics, noise and delays the MJX env evaluates
under; the draw's model fields are copied into a fresh `mujoco.MjModel` and stepped with
`mj_step`, the same substeps per control step as the env. It measures what a robot's drivers
would (every hinge/slide joint, base pose and twist), each with the draw's Gaussian noise for
the observation field of that name; what a runtime derives (`site_pos` by forward kinematics
from the joints, `base_gravity` from the orientation) carries the noise of what it is derived
from, not a draw of its own as in the MJX env. It also knows what a real robot does not: the
true achieved goal, for scoring only.

`serve` drives a `SimRobot` in real time (physics timestep on the monotonic clock, absolute
deadlines, `speed` times faster for tests) and speaks the runtime's ZMQ transport: observations
and telemetry out at the control rate, the newest action in, applied as servos would (zero-order
hold from the next physics step, after the draw's action delay).

Positions read at a control step (sites, bodies: `site_pos`, `base_pos`, the achieved goal) are
recomputed by kinematics after the last physics step, as the env does, so they belong to the
same instant as the joint angles a robot measures. MJX's implicitfast follows MuJoCo C's rule for
force-clamped servos through `crl.sim.mjx`. Contact-rich robots (the ant) still drift apart
from the MJX env within a few control steps: the two contact solvers differ.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import jax
import mujoco
import numpy as np
from numpy.typing import NDArray

from crl.core.usage import ConfigError
from crl.sim.config import OBSERVATION_FIELDS
from crl.sim.randomization import MODEL_FIELDS  # the rest, noise and delay, it applies itself
from crl.testbed.clock import RobotClock

if TYPE_CHECKING:
    from crl.runtime.auth import Keys
    from crl.runtime.messages import Action
    from crl.runtime.transport import Endpoints, RobotLink
    from crl.sim.env import GoalReachEnv

Vector = NDArray[np.float64]
_SCALAR_JOINTS = (int(mujoco.mjtJoint.mjJNT_HINGE), int(mujoco.mjtJoint.mjJNT_SLIDE))
DROP_REASONS = ("joints", "command", "foreign")


class RobotError(ConfigError):
    """A sim robot that cannot start (bad DR mode, speed, port); one line, what to change."""


class ActionError(ValueError):
    """An action the robot cannot execute; `reason` (one of DROP_REASONS) is what it counts."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


def episode_key(seed: int, episode: int) -> jax.Array:
    """The env reset key of episode `episode`: the same (seed, episode) gives the same robot."""
    return jax.random.fold_in(jax.random.key(seed), episode)


@dataclass(frozen=True)
class Episode:
    """One episode's robot and task, as the MJX env's reset drew them (numpy)."""

    index: int
    qpos: Vector
    qvel: Vector
    ctrl: Vector  # all actuators; the actuated ones hold the start pose (servos) or push 0
    goal: Vector
    model_fields: dict[str, np.ndarray] = field(repr=False)
    obs_noise_std: dict[str, float]  # per observation field, in its units (OBSERVATION_FIELDS)
    action_delay: int  # control steps


@dataclass(frozen=True)
class Reading:
    """What the robot's sensors report (noisy): joints by name, base pose (world) and twist
    (base frame) when the task has a floating base."""

    joint_names: tuple[str, ...]
    joint_pos: Vector
    joint_vel: Vector
    base_pos: Vector | None = None
    base_quat: Vector | None = None
    base_lin_vel: Vector | None = None
    base_ang_vel: Vector | None = None


class SimRobot:
    """One MuJoCo (C) instance playing the real robot of `task`, stepped in lockstep by callers.

    `reset(k)` starts episode k; `apply(values)` commands the actuated joints in physical units
    (spec order); `step_physics()` advances one physics step, `step_control()` to the next
    control step; `observation()` is the noisy `Reading`; `achieved_goal()` the true one;
    `done` ends the episode where the env's step would (its length, or a fall out of the task's
    healthy height band), and `serve` then starts the next one.
    """

    def __init__(self, task: str, dr: str = "off", seed: int = 0, env: GoalReachEnv | None = None):
        from crl.sim.env import DR_MODES, jit
        from crl.sim.setup import setup_jax

        setup_jax()  # XLA flags and the MJX patch before the env compiles (the ROS sim_bridge)
        if dr not in DR_MODES:
            raise RobotError(f"dr: {dr!r} is not one of {', '.join(DR_MODES)}")
        if env is None:
            from crl.sim import tasks

            env = tasks.make(task, dr=dr)
        elif env.dr_mode != dr:
            raise RobotError(f"dr: the env given runs {env.dr_mode!r}, not {dr!r}")

        self.env = env
        self.task = env.config.name
        self.seed = seed
        self.spec = env.spec
        self.nominal: mujoco.MjModel = env.mj_model
        self.episode_length = env.episode_length
        self.substeps = int(env._substeps)
        self.timestep = float(env.mj_model.opt.timestep)
        self.control_period = self.substeps * self.timestep
        self._reset = jit(env.reset)
        # The action mapping, as the env's action_to_ctrl does it for physical units.
        self.act_ids = np.asarray(env._act_ids)
        self.action_joints: tuple[str, ...] = tuple(env.joint_names)
        self.action_kind: str = env.action_kind
        self._unit = np.asarray(env._ctrl_unit, np.float64)
        self._ctrl_low = np.asarray(env._ctrl_low, np.float64)
        self._ctrl_high = np.asarray(env._ctrl_high, np.float64)
        # Everything a robot's joint-state driver reports: every hinge and slide joint.
        m = self.nominal
        joints = [j for j in range(m.njnt) if m.jnt_type[j] in _SCALAR_JOINTS]
        self.joint_names = tuple(
            mujoco.mj_id2name(m, mujoco.mjtObj.mjOBJ_JOINT, j) or f"#{j}" for j in joints
        )
        self._qadr = np.asarray(m.jnt_qposadr[joints], np.int64)
        self._dadr = np.asarray(m.jnt_dofadr[joints], np.int64)
        self._base = int(env._base_id)
        self._base_dof = int(env._base_dofadr)
        self._goal_id = int(env._goal_id)
        self._goal_axes = np.asarray(env._goal_axes)
        self._goal_site = env.config.goal_kind == "site"
        self.model: mujoco.MjModel = copy.deepcopy(m)
        self.data = mujoco.MjData(self.model)
        self.episode: Episode | None = None
        self.t = 0  # control steps taken this episode
        self.physics_steps = 0  # this episode
        self.last_command = np.zeros(len(self.action_joints))  # physical, clipped
        # (due physics step, ctrl, the caller's tag for it)
        self._pending: deque[tuple[int, Vector, float]] = deque()
        self._rng = np.random.default_rng()
        self._drawn: tuple[int, Episode] | None = None  # `prefetch`ed: (index, its draw)

    # -- episodes ---------------------------------------------------------------------------------

    def draw(self, index: int) -> Episode:
        """Episode `index`'s start, goal and draw from the MJX env's jitted reset."""
        state = self._reset(episode_key(self.seed, index))
        d, dr = jax.device_get((state.data, state.dr))
        return Episode(
            index=index,
            qpos=np.asarray(d.qpos, np.float64),
            qvel=np.asarray(d.qvel, np.float64),
            ctrl=np.asarray(d.ctrl, np.float64),
            goal=np.asarray(jax.device_get(state.goal), np.float64),
            model_fields={name: np.asarray(getattr(dr, name)) for name in MODEL_FIELDS},
            obs_noise_std={
                name: float(std)
                for name, std in zip(OBSERVATION_FIELDS, np.asarray(dr.obs_noise_std), strict=True)
            },
            action_delay=int(dr.action_delay),
        )

    def prefetch(self, index: int) -> None:
        """Draw episode `index` now, so that its `reset` at an episode's end only builds the
        model (the draw runs the env's jitted reset: a few ms the robot's clock cannot spare
        between a control step and its observation). `prefetch_if_due` picks the moment."""
        self._drawn = (index, self.draw(index))

    def prefetch_if_due(self) -> bool:
        """Draw the next episode if it is not drawn and now is the quiet moment for it: a
        physics step between two control steps, past the episode's first. Right after an
        observation goes out (an episode's first too) the runtime's answer is on its way, and a
        robot busy drawing takes it a few ms late: once an episode, 2% of a 50-step episode's
        answers, enough to set the robot-measured latency's 99th percentile. A physics step
        later that answer has come, and the next observation is most of a period away. True
        when it drew."""
        if (self._drawn is not None or self.episode is None
                or self.physics_steps <= self.substeps or self.physics_steps % self.substeps == 0):
            return False
        self.prefetch(self.episode.index + 1)
        return True

    def reset(self, index: int) -> Episode:
        """Start episode `index`: a fresh model with its draw, its start state and hold ctrl."""
        drawn = self._drawn
        ep = drawn[1] if drawn is not None and drawn[0] == index else self.draw(index)
        self._drawn = None
        model = copy.deepcopy(self.nominal)
        for name, value in ep.model_fields.items():
            getattr(model, name)[...] = value
        data = mujoco.MjData(model)
        data.qpos[:], data.qvel[:], data.ctrl[:] = ep.qpos, ep.qvel, ep.ctrl
        mujoco.mj_forward(model, data)
        self.model, self.data, self.episode = model, data, ep
        self.t = self.physics_steps = 0
        self._pending.clear()
        self.last_command = ep.ctrl[self.act_ids] * self._unit
        seq = np.random.SeedSequence([self.seed % 2**64, index])
        self._rng = np.random.default_rng(seq)
        return ep

    def hold_pose(self, joint_pos: Vector) -> None:
        """Put the actuated joints at `joint_pos` (spec order, rad or m), still, their servos
        holding there: a start of one's choosing in the episode's dynamics. Commands in flight
        are dropped. Position-servo robots only (an effort command holds no pose)."""
        if self.episode is None:
            raise RuntimeError("SimRobot.hold_pose before reset")
        if self.action_kind != "position":
            raise RobotError(f"hold_pose: {self.task} takes {self.action_kind} commands; only "
                             "position servos hold a pose")
        values = np.asarray(joint_pos, np.float64)
        if values.shape != self._unit.shape or not np.isfinite(values).all():
            raise ActionError("joints", f"expected {self._unit.size} finite joint positions "
                              f"({', '.join(self.action_joints)})")
        ctrl = np.clip(values / self._unit, self._ctrl_low, self._ctrl_high)
        m, d = self.model, self.data
        qadr = [m.jnt_qposadr[mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_JOINT, name)]
                for name in self.action_joints]
        d.qpos[qadr] = ctrl * self._unit
        d.qvel[:] = 0.0
        d.ctrl[self.act_ids] = ctrl
        mujoco.mj_forward(m, d)
        self.last_command = ctrl * self._unit
        self._pending.clear()

    # -- acting -----------------------------------------------------------------------------------

    def order(self, joints: tuple[str, ...], values: Vector, command: str) -> Vector:
        """`values` for `joints` → spec order; ActionError unless it commands exactly the
        actuated joints (any order) with this robot's command kind."""
        if command != self.action_kind:
            raise ActionError("command", f"{command!r}; this robot takes {self.action_kind!r}")
        if len(joints) != len(values) or sorted(joints) != sorted(self.action_joints):
            raise ActionError(
                "joints", f"{list(joints)}; this robot's actuated joints are "
                f"{list(self.action_joints)}"
            )
        index = {n: i for i, n in enumerate(joints)}
        return np.asarray(values, np.float64)[[index[n] for n in self.action_joints]]

    def apply(self, physical: Vector, tag: float = math.nan) -> None:
        """Command the actuated joints (spec order, physical units): from the next physics step
        (after the episode's action delay, in control periods) the actuators hold it.
        `step_physics` returns `tag` when it takes effect."""
        if self.episode is None:
            raise RuntimeError("SimRobot.apply before reset")
        values = np.asarray(physical, np.float64)
        if values.shape != self._unit.shape or not np.isfinite(values).all():
            raise ActionError("joints", f"expected {self._unit.size} finite values")
        ctrl = np.clip(values / self._unit, self._ctrl_low, self._ctrl_high)
        self.last_command = ctrl * self._unit
        due = self.physics_steps + self.episode.action_delay * self.substeps
        self._pending.append((due, ctrl, tag))

    def step_physics(self) -> float | None:
        """One `mj_step`, with any command that has come due taking effect first; the tag of the
        newest such command (None when none took effect)."""
        took = None
        while self._pending and self._pending[0][0] <= self.physics_steps:
            _, ctrl, took = self._pending.popleft()
            self.data.ctrl[self.act_ids] = ctrl
        mujoco.mj_step(self.model, self.data)
        self.physics_steps += 1
        if self.physics_steps % self.substeps == 0:
            self.t += 1
            # Positions of this instant, as the env reads them after its control step.
            mujoco.mj_kinematics(self.model, self.data)
        return took

    def step_control(self) -> None:
        """Physics steps up to the next control step (the env's substeps from a control step)."""
        self.step_physics()
        while self.physics_steps % self.substeps:
            self.step_physics()

    @property
    def terminated(self) -> bool:
        """The episode ended early, as the env's step ends it: after a control step that left the
        base's height outside the task's `healthy_z_range` (a fallen robot; never at reset)."""
        band = self.env.config.healthy_z_range
        if band is None or self.t == 0:
            return False
        z = float(self.data.xpos[self._base, 2])
        return not band[0] <= z <= band[1]

    @property
    def done(self) -> bool:
        """The episode is over: its full length, or terminated (read at a control step)."""
        return self.t >= self.episode_length or self.terminated

    # -- sensing ----------------------------------------------------------------------------------

    def true_reading(self) -> Reading:
        """The noise-free measurements; base fields read as the env's observation does."""
        d, b = self.data, self._base
        if b < 0:
            return Reading(self.joint_names, d.qpos[self._qadr].copy(), d.qvel[self._dadr].copy())
        dof = self._base_dof
        xmat = d.xmat[b].reshape(3, 3)
        return Reading(
            self.joint_names,
            d.qpos[self._qadr].copy(),
            d.qvel[self._dadr].copy(),
            base_pos=d.xpos[b].copy(),
            base_quat=d.xquat[b].copy(),
            base_lin_vel=xmat.T @ d.qvel[dof : dof + 3],
            base_ang_vel=d.qvel[dof + 3 : dof + 6].copy(),
        )

    def observation(self) -> Reading:
        """The measurements, each with the episode's Gaussian noise for the observation field of
        its name (the env's std, in that field's units)."""
        if self.episode is None:
            raise RuntimeError("SimRobot.observation before reset")
        clean = self.true_reading()
        stds = self.episode.obs_noise_std
        noisy: dict[str, Any] = {}
        for f in dataclasses.fields(Reading):
            v = getattr(clean, f.name)
            std = stds.get(f.name, 0.0)
            if isinstance(v, np.ndarray) and std > 0:
                v = v + std * self._rng.standard_normal(v.shape)
            noisy[f.name] = v
        return Reading(**noisy)

    def achieved_goal(self) -> Vector:
        """The true (noise-free) achieved goal, as the env computes it; for scoring only."""
        pos = self.data.site_xpos if self._goal_site else self.data.xpos
        return np.asarray(pos[self._goal_id, self._goal_axes], np.float64)


# -- the real-time server -------------------------------------------------------------------------


@dataclass
class ServeStats:
    """What a `serve` run did; `summary()` is the line printed at exit."""

    episodes_done: int = 0
    control_steps: int = 0
    actions_received: int = 0
    dropped: dict[str, int] = field(default_factory=lambda: dict.fromkeys(DROP_REASONS, 0))
    late: int = 0  # times the loop fell a control period behind and re-anchored its clock
    link: dict[str, int] = field(default_factory=dict)

    def summary(self) -> str:
        dropped = sum(self.dropped.values())
        why = ", ".join(f"{k} {v}" for k, v in self.dropped.items() if v)
        bad = sum(v for k, v in self.link.items() if k.startswith("dropped_"))
        return (
            f"{self.episodes_done} episodes done, {self.control_steps} control steps, "
            f"actions received {self.actions_received}, dropped {dropped}"
            + (f" ({why})" if why else "")
            + f", undecodable {bad}, late {self.late}"
        )


def sleep_until(deadline: float) -> None:
    """Sleep to `deadline` (time.monotonic)."""
    time.sleep(max(0.0, deadline - time.monotonic()))


class StepClock:
    """Absolute deadlines of the physics steps on the robot's clock, from when it is made (the
    real-time loops of `crl-sim robot` and the ROS package's `sim_bridge`).

    A loop that falls more than `lag_limit` behind re-anchors the deadlines to now instead of
    bursting through the missed steps to catch up.
    """

    def __init__(self, step_period: float, lag_limit: float, clock: RobotClock):
        self.step_period, self.lag_limit, self.clock = step_period, lag_limit, clock
        self.start, self.steps = clock.elapsed(), 0

    def wait(self, until: Callable[[float], None] = sleep_until) -> bool:
        """`until(deadline)` (time.monotonic) to the next step's deadline, which waits for it
        (by default, a sleep); True when it was already too late and re-anchored."""
        self.steps += 1
        deadline = self.start + self.steps * self.step_period
        now = self.clock.elapsed()
        if now < deadline:
            until(self.clock.host_time(deadline))
        elif now - deadline > self.lag_limit:
            self.reanchor()
            return True
        return False

    def reanchor(self) -> None:
        """The current step's deadline is now: what ran past it (a reset) is not a lag."""
        self.start = self.clock.elapsed() - self.steps * self.step_period


@dataclass
class _ServeRun:
    """One `serve` run: the robot, its clock and transport, what it has counted, and the latency
    of the newest action: from its observation's measurement to the action's arrival
    (`latency_ms`) and to its taking effect in the physics (`applied_ms`, after the episode's
    action delay); NaN until an action carries its observation's stamp."""

    robot: SimRobot
    link: RobotLink
    stats: ServeStats
    clock: RobotClock
    latency_ms: float = math.nan
    applied_ms: float = math.nan
    first_stamp: float = math.inf  # of this robot's first observation

    def publish(self, final: bool = False) -> None:
        """Telemetry of this control step; before it, unless final, the observation."""
        from crl.runtime.messages import Observation, Telemetry

        robot, link = self.robot, self.link
        ep = robot.episode
        assert ep is not None
        session, seq, stamp = link.stamper.next()
        if not final:
            self.first_stamp = min(self.first_stamp, stamp)
            r = robot.observation()
            link.publish_observation(Observation(
                session, seq, stamp, r.joint_names, r.joint_pos, r.joint_vel,
                r.base_pos, r.base_quat, r.base_lin_vel, r.base_ang_vel,
            ))
            session, seq, _ = link.stamper.next()  # the same stamp pairs the two
        link.publish_telemetry(Telemetry(
            session, seq, stamp, ep.index, robot.t, robot.episode_length, ep.goal,
            robot.achieved_goal(), self.latency_ms, self.applied_ms,
            self.stats.actions_received, robot.last_command,
        ))

    def take_action(self, action: Action, received: float) -> None:
        """Apply an action as it arrives (at `received`, time.monotonic): from the next physics
        step. One the robot cannot execute is counted by its reason and dropped. So is one that
        answers no observation of this robot ("foreign"): what a runtime sent a previous robot
        (before a restart: its safe hold, its last target) is for another pose."""
        if action.obs_stamp < self.first_stamp:
            self.stats.dropped["foreign"] += 1
            return
        measured = action.obs_stamp if action.obs_seq >= 0 and action.obs_stamp > 0 else math.nan
        try:
            self.robot.apply(self.robot.order(action.joints, action.values, action.command),
                             tag=measured)
        except ActionError as e:
            self.stats.dropped[e.reason] += 1
            return
        self.stats.actions_received += 1
        if math.isfinite(measured):
            self.latency_ms = (self.clock.wall(received) - measured) * 1000.0

    def take_actions(self, deadline: float) -> None:
        """Take each action as it arrives until `deadline` (time.monotonic)."""
        for action, received in self.link.actions_until(deadline):
            self.take_action(action, received)

    def take_pending(self) -> None:
        """Take what arrived since the wait ended, as the physics step begins."""
        action = self.link.poll_action()
        if action is not None:
            self.take_action(action, time.monotonic())

    def step_physics(self) -> None:
        measured = self.robot.step_physics()
        if measured is not None and math.isfinite(measured):
            self.applied_ms = (self.clock.wall() - measured) * 1000.0

    def end_control_step(self, episodes: int) -> bool:
        """Publish the control step just reached; at an episode's end, its final telemetry and
        the next episode's start. True when `episodes` episodes (0: no limit) are done."""
        robot, stats = self.robot, self.stats
        stats.control_steps += 1
        if not robot.done:
            self.publish()
            return False
        self.publish(final=True)
        stats.episodes_done += 1
        if episodes and stats.episodes_done >= episodes:
            return True
        assert robot.episode is not None
        robot.reset(robot.episode.index + 1)
        # The clock keeps its phase across a reset (the model's rebuild, under a millisecond for
        # the reacher; the next draw was made ahead): a runtime whose ticks are locked to this
        # robot's samples stays locked, as it would with a real robot's driver.
        self.publish()
        return False


def serve(
    robot: SimRobot,
    endpoints: Endpoints,
    *,
    speed: float = 1.0,
    episodes: int = 0,
    stop: Callable[[], bool] = lambda: False,
    announce: Callable[[str], None] = print,
    link: RobotLink | None = None,
    stats: ServeStats | None = None,
    keys: Keys | None = None,
    clock_ppm: float = 0.0,
    realtime: bool = False,
) -> ServeStats:
    """Run `robot` in real time on the transport until `stop()` or `episodes` episodes (0: no
    end). Observations and telemetry go out at each control step; each action is taken as it
    arrives and applied from the next physics step. Deadlines are absolute on the robot's clock
    (`clock_ppm` fast or slow against this computer's: `RobotClock`, which also stamps the
    messages); a loop that falls a whole control period behind re-anchors (counted as `late`)
    instead of bursting to catch up. A new episode's reset (a few ms of the env's jitted reset)
    keeps the clock's phase. `stats`, if given, is filled as it runs (a caller can watch it);
    `link` replaces the transport (it is then the caller's to close); `keys`: the robot's CURVE
    keys. `realtime`: this thread asks for SCHED_FIFO and its own transport's I/O threads one
    level above (`crl.runtime.loop.open_realtime`), as a robot's driver runs; refused, it runs
    with normal priority and says so.
    """
    from crl.runtime.loop import open_realtime
    from crl.runtime.transport import RobotLink

    if not (math.isfinite(speed) and speed > 0):
        raise RobotError(f"speed: must be a positive number, got {speed}")
    clock = RobotClock(clock_ppm)
    stats = ServeStats() if stats is None else stats
    own = link is None
    scheduling = ""
    if link is None and realtime:
        link, said = open_realtime(lambda: RobotLink(endpoints, keys, wall_clock=clock.wall))
        scheduling = f", {said}"
    link = RobotLink(endpoints, keys, wall_clock=clock.wall) if link is None else link
    if robot.episode is None:
        robot.reset(0)
    assert robot.episode is not None
    run = _ServeRun(robot, link, stats, clock)
    lag_limit = robot.control_period / speed
    try:
        announce(
            f"crl-sim robot: {robot.task} publishing on {endpoints.observations} (observations; "
            f"telemetry {endpoints.telemetry}, actions from {endpoints.actions}), "
            f"{1 / lag_limit:g} Hz, dr {robot.env.dr_mode}, seed {robot.seed}, speed {speed:g}"
            + (f", clock {clock_ppm:+g} ppm" if clock_ppm else "") + scheduling
        )
        run.publish()
        steps = StepClock(robot.timestep / speed, lag_limit, clock)
        while not stop():
            if steps.wait(run.take_actions):
                stats.late += 1
            run.take_pending()
            run.step_physics()
            at_control_step = robot.physics_steps % robot.substeps == 0
            if at_control_step and run.end_control_step(episodes):
                break
            robot.prefetch_if_due()  # the next episode's draw, between two observations
    finally:
        stats.link = dict(link.counters)
        if own:
            link.close()
    return stats
