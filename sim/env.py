"""A generic goal-reaching env on MJX: any MJCF plus a `TaskConfig`.

`reset` and `step` are pure functions of one env (batch them with `jax.vmap`). Every reset
draws a new start, goal and domain-randomization draw; the draw lives in the `State` and is
swapped into the nominal model inside `step` (see `crl.sim.randomization`). The policy spec is
built from the config and the compiled model, so sizes, joint names and action limits can never
disagree with the simulation that trained the policy.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar, cast

import jax
import jax.numpy as jnp
import mujoco
import numpy as np
from flax import struct

from crl.core.spec import ActionSpec, Field, GoalSpec, PolicySpec, Provenance
from crl.core.usage import ConfigError
from crl.sim.config import AXES, DR_OFF, OBSERVATION_FIELDS, DRConfig, TaskConfig
from crl.sim.mjx import mjx
from crl.sim.physics import COM_OBSERVATIONS, check_physics
from crl.sim.randomization import Draw, Randomizer, position_servos
from crl.sim.sampling import sample

ASSETS = Path(__file__).parent / "assets"
# Domain randomization modes, one spelling everywhere (CLIs, ROS parameters, run configs).
DR_MODES = ("off", "train", "held-out")
# XLA:CPU's fusion emitters (the default since jax 0.7) recompute MJX's body-tree kinematics once
# per level of a serial chain, so a 7-link arm steps ~100x slower; the older emitters do not.
# Only the CPU backend reads this option.
CPU_COMPILER_OPTIONS: Mapping[str, Any] = {"xla_cpu_use_fusion_emitters": False}

_FREE = int(mujoco.mjtJoint.mjJNT_FREE)
_SCALAR_JOINTS = (int(mujoco.mjtJoint.mjJNT_HINGE), int(mujoco.mjtJoint.mjJNT_SLIDE))


F = TypeVar("F", bound=Callable[..., Any])
# An observation field: (data, action queue) -> f32[size]. Most read only the data; the queue
# (State.action_queue, ctrl commands newest first) is there for `last_action`.
Extractor = Callable[[mjx.Data, jax.Array], jax.Array]


def compiler_options() -> dict[str, Any]:
    """XLA options to jit env code with on the default backend (see CPU_COMPILER_OPTIONS)."""
    return dict(CPU_COMPILER_OPTIONS) if jax.default_backend() == "cpu" else {}


def jit(fn: F, **kwargs: Any) -> F:
    """`jax.jit` with `compiler_options()`: use it for anything that steps an env."""
    return cast(F, jax.jit(fn, compiler_options=compiler_options(), **kwargs))


@struct.dataclass
class State:
    """One env's state. `obs` carries observation noise; `achieved_goal` never does."""

    data: mjx.Data
    obs: jax.Array  # f32[obs_dim], spec order
    goal: jax.Array  # f32[goal_dim], commanded goal in spec.goal.frame
    achieved_goal: jax.Array  # f32[goal_dim], what hindsight relabeling uses
    reward: jax.Array  # f32[], 1 within success_radius (logging only)
    success: jax.Array  # bool[]
    done: jax.Array  # bool[], this step ended the episode: t == episode_length, or it terminated
    t: jax.Array  # i32[], steps taken in this episode
    rng: jax.Array
    dr: Draw
    action_queue: jax.Array  # f32[max_action_delay + 1, act_dim] ctrl commands, newest first
    ramp_from: jax.Array  # f32[act_dim] the ctrl command that held the start pose (goal ramp)
    ramp: jax.Array  # i32[] steps this episode's commands ramp in over (0: none, see `reset`)


def _name(m: mujoco.MjModel, obj: mujoco.mjtObj, i: int) -> str:
    return mujoco.mj_id2name(m, obj, i) or f"#{i}"


def _names(m: mujoco.MjModel, obj: mujoco.mjtObj, n: int) -> str:
    return ", ".join(_name(m, obj, i) for i in range(n))


class GoalReachEnv:
    """Bring `config.goal_name`'s `goal_axes` within `success_radius` of a sampled goal.

    Attributes: `spec` (the PolicySpec; network None), `config`, `episode_length`, `mj_model`
    (the nominal MuJoCo model, for rendering), `mjx_model`, `dr_mode` and `dr_config` (the
    ranges in use), `randomizer`, `physics` (the MJX implementation, `crl.sim.physics`). A task
    changes the model or the samplers by overriding `edit_spec`, `sample_goal` or `sample_start`.

    `worlds`: the most envs one vmapped call steps. Only `physics="warp"` reads it: its contacts
    live in one buffer shared by the whole batch, sized here (the JAX impl gives every env its
    own).
    """

    def __init__(
        self, config: TaskConfig, dr: str = "train", physics: str = "jax", worlds: int = 1
    ):
        if dr not in DR_MODES:
            raise ConfigError(f"dr: {dr!r} is not one of {', '.join(DR_MODES)}")
        if worlds < 1:
            raise ConfigError(f"worlds: must be at least 1, got {worlds}")
        check_physics(physics, observation=config.observation)  # before anything compiles
        self.physics, self.worlds = physics, worlds
        self.config = config
        self.dr_mode = dr
        self.dr_config: DRConfig = {
            "train": config.dr_train, "held-out": config.dr_held_out, "off": DR_OFF
        }[dr]
        self.episode_length = config.episode_length
        path = Path(config.model_file)
        path = path if path.is_absolute() else ASSETS / path
        if not path.is_file():
            raise ConfigError(f"TaskConfig.model_file: {path} does not exist")
        self.model_path = path
        try:
            mj_spec = mujoco.MjSpec.from_file(str(path))
            self.edit_spec(mj_spec)
            self.mj_model: mujoco.MjModel = mj_spec.compile()
        except ValueError as e:
            raise ConfigError(f"TaskConfig.model_file: {path.name} does not compile: {e}") from None
        self.mjx_model = self._put_model()
        self._bind()
        self.randomizer = Randomizer(self.mj_model, self.mjx_model, self.dr_config)
        self.spec = self._build_spec()

    def use_ranges(self, ranges: DRConfig) -> None:
        """Draw robots from `ranges` from now on, in place of the mode's: robots outside the
        task's own ranges (the robustness envelope). Call it before anything is compiled;
        `dr_mode` still names the mode the env was made with."""
        self.dr_config = ranges
        self._queue_len = ranges.max_action_delay + 1
        self.randomizer = Randomizer(self.mj_model, self.mjx_model, ranges)

    # -- hooks a task may override ---------------------------------------------------------------

    def edit_spec(self, spec: mujoco.MjSpec) -> None:
        """Change the MJCF before it compiles (e.g. add maze walls). The default changes nothing."""

    def sample_goal(self, rng: jax.Array) -> jax.Array:
        return sample(self.config.goal_sampler, rng)

    def sample_eval_goal(self, rng: jax.Array) -> jax.Array:
        """A goal of the task's evaluation set: its training goals, unless the task has its own
        (the paper's mazes evaluate on their far goals only)."""
        return self.sample_goal(rng)

    def place_goal(self, qpos: jax.Array, goal: jax.Array) -> jax.Array:
        """The start qpos with the commanded goal shown in the model (e.g. a goal marker on
        slide joints, as the paper's humanoid has). The default changes nothing."""
        return qpos

    def couple_ctrl(self, ctrl: jax.Array) -> jax.Array:
        """The model's whole ctrl once the policy's actuators have theirs: a task whose other
        actuators follow them sets theirs here (the paper's arm drives its second finger with
        the first's command). The default changes nothing."""
        return ctrl

    def sample_start(self, rng: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(qpos, qvel): the start pose with joint and velocity noise, base placed if configured."""
        s, m = self.config.start, self.mj_model
        k_j, k_v, k_b = jax.random.split(rng, 3)
        qpos, qvel = self._home_qpos, jnp.zeros(m.nv)
        if s.joint_noise > 0:
            n = len(self._scalar_qadr)
            noise = jax.random.uniform(k_j, (n,), minval=-s.joint_noise, maxval=s.joint_noise)
            qpos = jnp.clip(qpos.at[self._scalar_qadr].add(noise), self._qpos_low, self._qpos_high)
        if s.vel_noise > 0:
            qvel = s.vel_noise * jax.random.normal(k_v, (m.nv,))
        if s.base_xy is not None:
            qpos = qpos.at[self._base_qadr : self._base_qadr + 2].set(sample(s.base_xy, k_b))
        return qpos, qvel

    # -- the env API -----------------------------------------------------------------------------

    def reset(self, rng: jax.Array, evaluation: bool = False) -> State:
        """A fresh episode from `rng`: robot draw, start, goal. An `evaluation` episode is run as
        the runtime runs a reach: its goal from the task's evaluation set, its commands ramped
        in over `goal_ramp` steps (the runtime's goal ramp); a training episode's are not
        (trained behind the ramp the arm held fewer held-out episodes: docs/benchmarks.md, "The
        goal ramp"). The same key gives the same start and robot either way."""
        rng, k_dr, k_start, k_goal, k_obs = jax.random.split(rng, 5)
        draw = self.randomizer.sample(k_dr)
        qpos, qvel = self.sample_start(k_start)
        goal = (self.sample_eval_goal if evaluation else self.sample_goal)(k_goal)
        qpos = self.place_goal(qpos, goal)
        ctrl = self.couple_ctrl(self._data0.ctrl.at[self._act_ids].set(self._hold_ctrl(qpos)))
        data = self._data0.replace(qpos=qpos, qvel=qvel, ctrl=ctrl)
        # Kinematics is all the observation and achieved goal need at t = 0 (the next step runs
        # the full forward pass); it keeps reset cheap to compile and to run.
        data = self._kinematics(self.randomizer.apply(draw), data)
        hold = ctrl[self._act_ids]
        queue = jnp.broadcast_to(hold, (self._queue_len, self.spec.act_dim))
        ramp = jnp.asarray(self.config.goal_ramp if evaluation else 0, jnp.int32)
        return self._finish(data, goal, draw, queue, (hold, ramp), jnp.zeros((), jnp.int32), rng,
                            k_obs)

    def step(self, state: State, action: jax.Array) -> State:
        """Advance one control step; the ctrl applied now is the one commanded `delay` steps ago."""
        model = self.randomizer.apply(state.dr)
        command = self.action_to_ctrl(action)
        if self.config.action_lowpass < 1.0:  # from the last command (ActionSpec.lowpass)
            last = state.action_queue[0]
            command = last + self.config.action_lowpass * (command - last)
        if self.config.goal_ramp > 0:  # an evaluation episode's first commands ramp in
            r = (state.t + 1) / jnp.maximum(state.ramp, 1)
            ramped = state.ramp_from + r * (command - state.ramp_from)
            command = jnp.where(r < 1.0, ramped, command)  # not ramping: the command, exactly
        queue = jnp.concatenate([command[None], state.action_queue[:-1]])
        ctrl = state.data.ctrl.at[self._act_ids].set(queue[state.dr.action_delay])
        ctrl = self.couple_ctrl(ctrl)
        data = state.data.replace(ctrl=ctrl)
        data = jax.lax.fori_loop(0, self._substeps, lambda _, d: mjx.step(model, d), data)
        # mjx.step leaves positions (site_xpos, xpos, xquat) as they were before its last
        # integration; a robot measures its joints now, and the runtime derives sites from those
        # by forward kinematics, so the observation must be of the same instant.
        data = self._kinematics(model, data)
        rng, k_obs = jax.random.split(state.rng)
        return self._finish(data, state.goal, state.dr, queue, (state.ramp_from, state.ramp),
                            state.t + 1, rng, k_obs)

    def reset_if_done(self, state: State) -> State:
        """Where `state.done`, a fresh episode drawn from `state.rng`; elsewhere `state`.

        The data merge is MJX's `Data.where`: under warp a leaf-wise `where` would batch the
        contact buffer the whole batch shares. Its unbatched fields come from the fresh data
        (the env's constants; a step rewrites the contacts), so a placeholder state (the
        trainer's zeros, all done) loses nothing. Under jax it is the leaf-wise `where`."""
        fresh = self.reset(state.rng)

        def merge(f: Any, s: Any) -> Any:
            if isinstance(f, mjx.Data):
                return f.where(~state.done, s)
            return jnp.where(state.done, f, s)

        merged: State = jax.tree.map(
            merge, fresh, state, is_leaf=lambda x: isinstance(x, mjx.Data)
        )
        return merged

    def action_to_ctrl(self, action: jax.Array) -> jax.Array:
        """[-1, 1] policy action → physical units (spec.action) → MuJoCo ctrl of the actuators."""
        physical = self._act_offset + self._act_scale * jnp.clip(action, -1.0, 1.0)
        ctrl: jax.Array = jnp.clip(physical, self._act_low, self._act_high) / self._ctrl_unit
        return ctrl

    def achieved_goal(self, data: mjx.Data) -> jax.Array:
        pos: jax.Array = data.site_xpos if self.config.goal_kind == "site" else data.xpos
        return pos[self._goal_id, self._goal_axes]

    def healthy(self, data: mjx.Data) -> jax.Array:
        """bool[]: the base's world z lies in `config.healthy_z_range` (True without a band).

        Outside it, the step that got there ends the episode (the paper's termination).
        """
        band = self.config.healthy_z_range
        if band is None:
            return jnp.ones((), bool)
        z: jax.Array = data.xpos[self._base_id, 2]
        return (z >= band[0]) & (z <= band[1])

    def observe(self, data: mjx.Data, action_queue: jax.Array) -> jax.Array:
        """The noise-free observation, fields concatenated in config order; `action_queue` is
        the state's (`State.action_queue`), which `last_action` reads."""
        return jnp.concatenate(
            [self._extractors[n](data, action_queue) for n in self.config.observation]
        )

    # -- internals -------------------------------------------------------------------------------

    def _finish(
        self,
        data: mjx.Data,
        goal: jax.Array,
        draw: Draw,
        queue: jax.Array,
        ramp: tuple[jax.Array, jax.Array],
        t: jax.Array,
        rng: jax.Array,
        k_obs: jax.Array,
    ) -> State:
        clean = self.observe(data, queue)
        # Each element's std is its field's (draw.obs_noise_std, in registry order), in the
        # field's units; unsensed fields (`last_action`) never get noise.
        std = draw.obs_noise_std[self._obs_field] * self._obs_sensed
        obs = clean + std * jax.random.normal(k_obs, clean.shape)
        achieved = self.achieved_goal(data)
        success = jnp.linalg.norm(achieved - goal) <= self.config.success_radius
        # A reset state is never terminal (the paper's reset, too): only a step can end an episode.
        terminated = (t > 0) & ~self.healthy(data)
        return State(
            data=data,
            obs=obs,
            goal=goal,
            achieved_goal=achieved,
            reward=success.astype(jnp.float32),
            success=success,
            done=(t >= self.episode_length) | terminated,
            t=t,
            rng=rng,
            dr=draw,
            action_queue=queue,
            ramp_from=ramp[0],
            ramp=ramp[1],
        )

    def _kinematics(self, model: mjx.Model, data: mjx.Data) -> mjx.Data:
        """Positions of this instant; with `cinert`, `cvel` or `body_lin_vel` observed, also the
        centre-of-mass quantities (mjx.step leaves those of the state before its last
        integration, and reset computes kinematics only)."""
        data = mjx.kinematics(model, data)
        if self._needs_com:
            data = mjx.com_vel(model, mjx.com_pos(model, data))
        return data

    def _hold_ctrl(self, qpos: jax.Array) -> jax.Array:
        """Start ctrl of the actuated joints: servos hold the start pose, motors push nothing."""
        hold = jnp.clip(qpos[self._act_qadr], self._ctrl_low, self._ctrl_high)
        return jnp.where(self._is_servo, hold, 0.0)

    def _bind(self) -> None:
        """Resolve every name in the config against the compiled model (ConfigError if absent)."""
        c, m = self.config, self.mj_model
        substeps = 1.0 / (c.control_hz * m.opt.timestep)
        if round(substeps) < 1 or abs(substeps - round(substeps)) > 1e-6:
            raise ConfigError(
                f"TaskConfig.control_hz: {c.control_hz} Hz does not divide the physics rate "
                f"{1 / m.opt.timestep:g} Hz of {self.model_path.name} (timestep {m.opt.timestep})"
            )
        self._substeps = round(substeps)
        self._bind_actuators()
        self._bind_bodies()
        self._bind_start()
        self._extractors = self._make_extractors()
        self._needs_com = not set(COM_OBSERVATIONS).isdisjoint(c.observation)

    def _bind_actuators(self) -> None:
        """The actuated joints, the one joint actuator that drives each, and the action mapping."""
        c, m, file = self.config, self.mj_model, self.model_path.name
        joint_act = {
            int(m.actuator_trnid[i, 0]): i
            for i in range(m.nu)
            if m.actuator_trntype[i] == int(mujoco.mjtTrn.mjTRN_JOINT)
        }
        if c.actuated_joints:
            joint_ids = []
            for name in c.actuated_joints:
                j = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_JOINT, name)
                if j < 0:
                    raise ConfigError(
                        f"TaskConfig.actuated_joints: no joint {name!r} in {file} "
                        f"(joints: {_names(m, mujoco.mjtObj.mjOBJ_JOINT, m.njnt)})"
                    )
                if j not in joint_act:
                    raise ConfigError(
                        f"TaskConfig.actuated_joints: joint {name!r} has no actuator in {file}"
                    )
                joint_ids.append(j)
        else:
            joint_ids = sorted(joint_act, key=joint_act.__getitem__)
        if not joint_ids:
            raise ConfigError(f"TaskConfig.actuated_joints: {file} has no joint actuators")
        for j in joint_ids:
            if m.jnt_type[j] not in _SCALAR_JOINTS:
                raise ConfigError(
                    f"TaskConfig.actuated_joints: {_name(m, mujoco.mjtObj.mjOBJ_JOINT, j)!r} "
                    "is not a hinge or slide joint"
                )
        act_ids = np.array([joint_act[j] for j in joint_ids])
        self.joint_names = tuple(_name(m, mujoco.mjtObj.mjOBJ_JOINT, j) for j in joint_ids)
        for a in act_ids:
            if not m.actuator_ctrllimited[a]:
                raise ConfigError(
                    f"TaskConfig.actuated_joints: actuator "
                    f"{_name(m, mujoco.mjtObj.mjOBJ_ACTUATOR, a)!r} has no ctrlrange; "
                    "the action mapping needs one"
                )

        servo = position_servos(m)[act_ids]
        motor = (m.actuator_biastype == int(mujoco.mjtBias.mjBIAS_NONE))[act_ids]
        if not (servo.all() or motor.all()):
            raise ConfigError(
                "TaskConfig.actuated_joints: actuators must be all position servos or all "
                f"motors in {file}"
            )
        self.action_kind = "position" if servo.all() else "effort"
        # A motor's physical unit is force/torque: ctrl × gain × gear.
        unit = np.where(servo, 1.0, m.actuator_gainprm[act_ids, 0] * m.actuator_gear[act_ids, 0])
        if (unit <= 0).any():
            raise ConfigError(f"TaskConfig.actuated_joints: a motor in {file} has gain*gear <= 0")
        ctrl_low, ctrl_high = m.actuator_ctrlrange[act_ids].T
        self._act_ids = jnp.asarray(act_ids)
        self._act_qadr = jnp.asarray(m.jnt_qposadr[joint_ids])
        self._act_dofadr = jnp.asarray(m.jnt_dofadr[joint_ids])
        self._is_servo = jnp.asarray(servo)
        self._ctrl_low, self._ctrl_high = jnp.asarray(ctrl_low), jnp.asarray(ctrl_high)
        self._ctrl_unit = jnp.asarray(unit, jnp.float32)
        self._phys_low, self._phys_high = ctrl_low * unit, ctrl_high * unit
        self._act_low = jnp.asarray(self._phys_low, jnp.float32)
        self._act_high = jnp.asarray(self._phys_high, jnp.float32)
        self._act_offset = jnp.asarray((self._phys_low + self._phys_high) / 2, jnp.float32)
        self._act_scale = jnp.asarray((self._phys_high - self._phys_low) / 2, jnp.float32)
        self._queue_len = self.dr_config.max_action_delay + 1

    def _bind_bodies(self) -> None:
        """The achieved-goal site or body, the free-floating base, the observed site."""
        c, m, file = self.config, self.mj_model, self.model_path.name
        obj = mujoco.mjtObj.mjOBJ_SITE if c.goal_kind == "site" else mujoco.mjtObj.mjOBJ_BODY
        self._goal_id = mujoco.mj_name2id(m, obj, c.goal_name)
        if self._goal_id < 0:
            raise ConfigError(f"TaskConfig.goal_name: no {c.goal_kind} {c.goal_name!r} in {file}")
        self._goal_axes = jnp.asarray([AXES.index(a) for a in c.goal_axes])
        self._base_id = self._base_qadr = self._base_dofadr = -1
        if c.base_body:
            b = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_BODY, c.base_body)
            if b < 0:
                raise ConfigError(f"TaskConfig.base_body: no body {c.base_body!r} in {file}")
            joints = range(m.body_jntadr[b], m.body_jntadr[b] + m.body_jntnum[b])
            free = [j for j in joints if m.jnt_type[j] == _FREE]
            if not free:
                raise ConfigError(f"TaskConfig.base_body: body {c.base_body!r} has no free joint")
            self._base_id = b
            self._base_qadr = int(m.jnt_qposadr[free[0]])
            self._base_dofadr = int(m.jnt_dofadr[free[0]])
        self._obs_body_ids = [-1, -1, -1]  # obs_body, then obs_body_pair
        for i, name in enumerate((c.obs_body, *c.obs_body_pair)):
            if name:
                self._obs_body_ids[i] = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_BODY, name)
                if self._obs_body_ids[i] < 0:
                    where = "obs_body" if i == 0 else "obs_body_pair"
                    raise ConfigError(f"TaskConfig.{where}: no body {name!r} in {file}")
        self._obs_body_root = int(m.body_rootid[max(self._obs_body_ids[0], 0)])
        obs_qadr = []
        for name in c.obs_joints:
            j = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_JOINT, name)
            if j < 0 or m.jnt_type[j] not in _SCALAR_JOINTS:
                raise ConfigError(
                    f"TaskConfig.obs_joints: no hinge or slide joint {name!r} in {file}"
                )
            obs_qadr.append(int(m.jnt_qposadr[j]))
        self._obs_joint_qadr = jnp.asarray(obs_qadr, jnp.int32)
        self._site_id = -1
        if c.obs_site:
            self._site_id = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_SITE, c.obs_site)
            if self._site_id < 0:
                raise ConfigError(f"TaskConfig.obs_site: no site {c.obs_site!r} in {file}")

    def _bind_start(self) -> None:
        """The start pose (a keyframe or qpos0), the joints its noise moves and their ranges."""
        c, m, file = self.config, self.mj_model, self.model_path.name
        mj_data = mujoco.MjData(m)
        if c.start.keyframe:
            k = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_KEY, c.start.keyframe)
            if k < 0:
                raise ConfigError(
                    f"TaskConfig.start.keyframe: no keyframe {c.start.keyframe!r} in {file}"
                )
            mujoco.mj_resetDataKeyframe(m, mj_data, k)
        self._home_qpos = jnp.asarray(mj_data.qpos, jnp.float32)
        scalar = [j for j in range(m.njnt) if m.jnt_type[j] in _SCALAR_JOINTS]
        self._scalar_qadr = jnp.asarray(m.jnt_qposadr[scalar], jnp.int32)
        low, high = np.full(m.nq, -np.inf), np.full(m.nq, np.inf)
        for j in scalar:
            if m.jnt_limited[j]:
                low[m.jnt_qposadr[j]], high[m.jnt_qposadr[j]] = m.jnt_range[j]
        self._qpos_low, self._qpos_high = jnp.asarray(low), jnp.asarray(high)
        self._data0 = self._put_data(mj_data)

    def _put_model(self) -> mjx.Model:
        """The nominal model on the device, in `self.physics`'s implementation. What MJX's warp
        backend cannot simulate (it raises NotImplementedError in put_model) is one line."""
        if self.physics == "jax":
            return mjx.put_model(self.mj_model, impl="jax")
        try:
            return mjx.put_model(self.mj_model, impl="warp")
        except (NotImplementedError, ValueError) as e:
            raise ConfigError(
                f"physics: MJX's warp backend cannot simulate {self.model_path.name}: {e}"
            ) from None

    def _put_data(self, mj_data: mujoco.MjData) -> mjx.Data:
        """The start data. Under warp, its contact buffer (`naconmax`, shared by all `worlds`)
        and constraint rows per world (`njmax`) are the JAX impl's own static counts (a slot for
        every contact a geom pair can make), so warp drops none that jax would simulate; warp's
        defaults (about 48 contacts for the whole batch) would drop contacts of a large batch."""
        m = self.mj_model
        jax_data = mjx.put_data(m, mj_data, impl="jax")
        if self.physics == "jax":
            return jax_data
        sizes = cast(Any, jax_data._impl)  # DataJAX: ncon, nefc (static ints)
        try:
            return mjx.put_data(
                m,
                mj_data,
                impl="warp",
                naconmax=max(1, int(sizes.ncon)) * self.worlds,
                njmax=max(1, int(sizes.nefc)),
            )
        except (NotImplementedError, ValueError) as e:
            raise ConfigError(
                f"physics: MJX's warp backend cannot simulate {self.model_path.name}: {e}"
            ) from None

    def _make_extractors(self) -> dict[str, Extractor]:
        qadr, dadr, base = self._act_qadr, self._act_dofadr, self._base_id
        body, body_a, body_b = self._obs_body_ids
        root = self._obs_body_root
        lin = slice(self._base_dofadr, self._base_dofadr + 3)
        ang = slice(self._base_dofadr + 3, self._base_dofadr + 6)
        unit, offset, scale = self._ctrl_unit, self._act_offset, self._act_scale
        goal_site = self.config.goal_kind == "site"
        # A free joint's linear velocity is in the world frame, its angular one in the body frame.
        extractors: dict[str, Extractor] = {
            "joint_pos": lambda d, q: d.qpos[qadr],
            "joint_vel": lambda d, q: d.qvel[dadr],
            "base_pos": lambda d, q: d.xpos[base],
            "base_quat": lambda d, q: d.xquat[base],
            "base_lin_vel": lambda d, q: d.xmat[base].T @ d.qvel[lin],
            "base_ang_vel": lambda d, q: d.qvel[ang],
            "base_gravity": lambda d, q: d.xmat[base].T @ jnp.array([0.0, 0.0, -1.0]),
            "site_pos": lambda d, q: d.site_xpos[self._site_id],
            # The newest queued command (before the delay), ctrl → physical → [-1, 1]: the
            # clipped physical command the env sent, as spec.action normalizes it.
            "last_action": lambda d, q: (q[0] * unit - offset) / scale,
            "qpos": lambda d, q: d.qpos,
            "qvel": lambda d, q: d.qvel,
            "cinert": lambda d, q: d._impl.cinert[1:].ravel(),  # MJX 3.17: no public field
            "cvel": lambda d, q: d.cvel[1:].ravel(),
            # After a step, the force of the step's last substep (a motor's: gear x ctrl).
            "qfrc_actuator": lambda d, q: d.qfrc_actuator,
            "goal_pos": lambda d, q: (d.site_xpos if goal_site else d.xpos)[self._goal_id],
            "obs_joint_pos": lambda d, q: d.qpos[self._obs_joint_qadr],
            "body_pos": lambda d, q: d.xpos[body],
            # cvel is the body's spatial velocity (angular, linear) at its tree's centre of
            # mass; moved to the body's origin: v + w x (origin - com).
            "body_lin_vel": lambda d, q: d.cvel[body, 3:]
            + jnp.cross(d.cvel[body, :3], d.xpos[body] - d.subtree_com[root]),
            "body_gap": lambda d, q: jnp.linalg.norm(d.xpos[body_a] - d.xpos[body_b])[None],
        }
        if extractors.keys() != OBSERVATION_FIELDS.keys():
            raise RuntimeError("crl.sim.env extractors and config.OBSERVATION_FIELDS differ")
        return extractors

    def _build_spec(self) -> PolicySpec:
        c = self.config
        queue = jax.ShapeDtypeStruct((self._queue_len, len(self.joint_names)), jnp.float32)
        sizes = jax.eval_shape(
            lambda d, q: {n: self._extractors[n](d, q) for n in c.observation}, self._data0, queue
        )
        observation, sensed, registry = [], [], list(OBSERVATION_FIELDS)
        obs_field: list[int] = []
        for name in c.observation:
            info = OBSERVATION_FIELDS[name]
            size = int(np.prod(sizes[name].shape))
            sensed += [info.sensed] * size
            obs_field += [registry.index(name)] * size
            joints = (
                self.joint_names if name in ("joint_pos", "joint_vel", "last_action")
                else c.obs_joints if name == "obs_joint_pos" else ()
            )
            target = repr(getattr(c, info.needs)) if info.needs else ""
            meaning = info.meaning.format(target)
            observation.append(
                Field(name, size, meaning, info.frame, joints)
            )
        # 1 where observation noise applies, 0 on fields the controller knows exactly; and each
        # element's field, as an index into OBSERVATION_FIELDS (and Draw.obs_noise_std).
        self._obs_sensed = jnp.asarray(sensed, jnp.float32)
        self._obs_field = jnp.asarray(obs_field, jnp.int32)
        low, high = c.goal_sampler.bounds()
        goal = GoalSpec(
            fields=(
                Field(
                    f"{c.goal_name}_{c.goal_axes}",
                    len(c.goal_axes),
                    f"{c.goal_axes} position of {c.goal_kind} {c.goal_name!r} (m)",
                    c.goal_frame,
                ),
            ),
            frame=c.goal_frame,
            low=tuple(float(v) for v in low),
            high=tuple(float(v) for v in high),
        )
        action = ActionSpec(
            size=len(self.joint_names),
            joints=self.joint_names,
            kind=self.action_kind,
            scale=tuple(float(v) for v in (self._phys_high - self._phys_low) / 2),
            offset=tuple(float(v) for v in (self._phys_high + self._phys_low) / 2),
            low=tuple(float(v) for v in self._phys_low),
            high=tuple(float(v) for v in self._phys_high),
            lowpass=float(c.action_lowpass),
            goal_ramp=int(c.goal_ramp),
        )
        return PolicySpec(
            task=c.name,
            observation=tuple(observation),
            goal=goal,
            action=action,
            control_hz=float(c.control_hz),
            success_radius=float(c.success_radius),
            provenance=Provenance(
                env=c.name,
                robot_model_sha256=hashlib.sha256(self.model_path.read_bytes()).hexdigest(),
                domain_randomization={"mode": self.dr_mode, **self.dr_config.to_dict()},
            ),
        )
