"""MuJoCo MJX, imported quietly, with MuJoCo C's rule for force-clamped actuators.

Without NVIDIA Warp installed, `import mujoco.mjx` prints "Failed to import warp" to stdout;
crl uses MJX's jax implementation unless asked for warp (`crl.sim.physics`), and stdout belongs
to the commands (`crl-sim info` prints a spec there). Every crl module takes `mjx` from here.

The implicitfast integrator solves the velocity update implicitly in the actuators' velocity
derivatives (a position servo's kv). MuJoCo C leaves out an actuator whose force its forcerange
clamps: the clamped force does not change with velocity. MJX 3.17's `deriv_smooth_vel` keeps it,
so a saturated servo is damped by kv in training but not on MuJoCo C (the sim robot) or on a
real torque-limited servo: a saturated reacher arm moved up to 0.3 rad less per control step in
MJX, and a policy trained there reached 20% of its goals on MuJoCo C. `deriv_smooth_vel` below is
MJX 3.17's with C's rule added (and nothing else changed); it replaces MJX's for that version
only (`tests/test_sim_robot.py` checks MJX against MuJoCo C with saturating actions). The warp
backend needs no patch: its own derivative already skips force-clamped actuators
(mjx/third_party/mujoco_warp/_src/derivative.py, "skip if force is clamped by forcerange").
The patch is applied by `apply_mjx_patch`, which `crl.sim.setup.setup_jax()` calls: importing
this module changes nothing of MJX.
"""

import contextlib
import io

import jax
import jax.numpy as jnp
import mujoco

with contextlib.redirect_stdout(io.StringIO()):
    from mujoco import mjx
    from mujoco.mjx._src import derivative
    from mujoco.mjx._src.types import BiasType, DisableBit, DynType, GainType

PATCHED_VERSIONS = ("3.17.0",)
_mjx_deriv_smooth_vel = derivative.deriv_smooth_vel


def deriv_smooth_vel(m: mjx.Model, d: mjx.Data) -> jax.Array | None:
    """d(smooth forces)/d(qvel) for implicitfast, without force-clamped actuators (MuJoCo C)."""
    qderiv: jax.Array | None = _mjx_deriv_smooth_vel(m, d)  # MJX's own checks, every other term
    if m.opt.disableflags & DisableBit.ACTUATION or qderiv is None:
        return qderiv
    bias_vel = m.actuator_biasprm[:, 2] * (m.actuator_biastype == BiasType.AFFINE)
    gain_vel = m.actuator_gainprm[:, 2] * (m.actuator_gaintype == GainType.AFFINE)
    ctrl = d.ctrl.at[m.actuator_dyntype != DynType.NONE].set(d.act)
    vel = bias_vel + gain_vel * ctrl
    force, limit = d.actuator_force, m.actuator_forcerange
    clamped = m.actuator_forcelimited & ((force <= limit[:, 0]) | (force >= limit[:, 1]))
    moment = d._impl.actuator_moment
    # Take the clamped actuators' terms back out of MJX's sum.
    corrected: jax.Array = qderiv - moment.T @ (moment * jnp.where(clamped, vel, 0.0)[:, None])
    return corrected


def apply_mjx_patch() -> None:
    """Give MJX C's rule (`deriv_smooth_vel` above) on the versions it is written for; idempotent.
    MJX looks the function up when it traces, so it holds for what is traced after this call."""
    if mujoco.__version__ in PATCHED_VERSIONS:
        derivative.deriv_smooth_vel = deriv_smooth_vel

__all__ = ["apply_mjx_patch", "mjx"]
