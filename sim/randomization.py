"""Per-episode domain randomization carried in the env state.

MuJoCo Playground binds one randomized model per env slot for a whole run. We redraw at every
reset instead, so each episode of each slot sees a new robot: the randomized `mjx.Model` fields
are stored in the `State` (`Draw`) and swapped into the nominal model inside `step`. That keeps
the model a closed-over constant and the batch a plain `jax.vmap` over states.
"""

from __future__ import annotations

import functools
import zlib

import jax
import jax.numpy as jnp
import mujoco
import numpy as np
from flax import struct

from crl.core.usage import ConfigError
from crl.sim.config import OBSERVATION_FIELDS, DRConfig, Ranges
from crl.sim.mjx import mjx


@struct.dataclass
class Draw:
    """One episode's robot: randomized model fields, observation noise and action delay."""

    geom_friction: jax.Array  # [ngeom, 3]; the sliding column scaled by one factor
    body_mass: jax.Array  # [nbody]
    body_inertia: jax.Array  # [nbody, 3], scaled with the mass
    body_subtreemass: jax.Array  # [nbody], consistent with body_mass
    dof_damping: jax.Array  # [nv]
    actuator_gainprm: jax.Array  # [nu, 10]
    actuator_biasprm: jax.Array  # [nu, 10]
    obs_noise_std: jax.Array  # f32[len(OBSERVATION_FIELDS)], per field in registry order
    action_delay: jax.Array  # i32[], control steps


# The `Draw` fields that are mjx model fields, swapped into the nominal model by `apply`.
MODEL_FIELDS = ("geom_friction", "body_mass", "body_inertia", "body_subtreemass", "dof_damping",
                "actuator_gainprm", "actuator_biasprm")


def position_servos(m: mujoco.MjModel) -> np.ndarray:
    """bool[nu]: actuators whose bias is −kp·q (a position servo), so kp lives in two places.

    The gain is kp in a servo whose target is its ctrl; the paper's arm (`paper_arm.xml`) has
    servos with a lower gain than kp (they settle short of the target), servos all the same:
    an affine bias with no constant term pulling toward q = 0, and a positive gain."""
    affine = m.actuator_biastype == int(mujoco.mjtBias.mjBIAS_AFFINE)
    bias, gain = m.actuator_biasprm, m.actuator_gainprm[:, 0]
    servo: np.ndarray = affine & (bias[:, 0] == 0) & (bias[:, 1] < 0) & (gain > 0)
    return servo


def _subtree_matrix(m: mujoco.MjModel) -> np.ndarray:
    """[nbody, nbody] with A[i, j] = 1 when body j is in the subtree of body i."""
    a = np.zeros((m.nbody, m.nbody), np.float32)
    for j in range(m.nbody):
        i = j
        while True:
            a[i, j] = 1.0
            if i == 0:
                break
            i = int(m.body_parentid[i])
    return a


def draw_from(u: jax.Array, ranges: Ranges) -> jax.Array:
    """Map uniforms u in [0, 1) onto the union of `ranges`, uniformly over its total length
    (each interval weighted by its length; equally, if every interval is a single value)."""
    low = np.array([r[0] for r in ranges], np.float32)
    high = np.array([r[1] for r in ranges], np.float32)
    if len(ranges) == 1:
        one: jax.Array = low[0] + (high[0] - low[0]) * u
        return one
    length = high - low
    if length.sum() == 0:
        return jnp.asarray(low)[jnp.minimum((u * len(low)).astype(jnp.int32), len(low) - 1)]
    ends = np.cumsum(length)
    t = u * ends[-1]
    i = jnp.minimum(jnp.searchsorted(jnp.asarray(ends), t, side="right"), len(low) - 1)
    start = jnp.asarray(ends - length)[i]
    # Rounding may carry t a hair past an interval's end: keep every value inside its interval.
    return jnp.clip(jnp.asarray(low)[i] + (t - start), jnp.asarray(low)[i], jnp.asarray(high)[i])


def field_uniforms(rng: jax.Array, names: tuple[str, ...]) -> jax.Array:
    """f32[len(names)]: one uniform in [0, 1) per name, from a stream keyed by the name alone
    (its CRC-32), so a field's draw does not move when other fields are added or reordered."""
    streams = np.array([zlib.crc32(name.encode()) for name in names], np.uint32)
    if len(set(streams.tolist())) != len(streams):
        raise ValueError(f"field_uniforms: two of {names} share a stream (duplicate or CRC clash)")
    draw: jax.Array = jax.vmap(lambda i: jax.random.uniform(jax.random.fold_in(rng, i)))(
        jnp.asarray(streams)
    )
    return draw


class Randomizer:
    """Draws `Draw`s for one model under one `DRConfig` and applies them to the mjx model."""

    def __init__(self, mj_model: mujoco.MjModel, mjx_model: mjx.Model, config: DRConfig):
        if mj_model.npair and config.friction != DRConfig().friction:
            # Explicit <pair> contacts carry their own friction, which the common factor would
            # miss: their contacts would keep the nominal friction under friction DR.
            raise ConfigError(
                "DRConfig.friction: the model has explicit contact pairs, which friction DR does "
                "not scale; remove the pairs or keep friction nominal"
            )
        self.config = config
        self._model = mjx_model
        self._servo = jnp.asarray(position_servos(mj_model))
        self._subtree = jnp.asarray(_subtree_matrix(mj_model))

    def nominal(self) -> Draw:
        return Draw(**{f: getattr(self._model, f) for f in MODEL_FIELDS},
                    obs_noise_std=jnp.zeros(len(OBSERVATION_FIELDS)),
                    action_delay=jnp.zeros((), jnp.int32))

    def sample(self, rng: jax.Array) -> Draw:
        """A fresh draw; the same rng gives the same draw. All-ones ranges give `nominal()`."""
        c, m = self.config, self._model
        if c == DRConfig():
            return self.nominal()
        # One uniform draw sliced per model parameter (each jax.random call adds compile time on
        # CPU), and the noise stds from their own key, one stream per field name: a field's draw
        # does not move when fields are added to the registry.
        k_model, k_noise = jax.random.split(rng)
        sizes = (1, m.nbody, m.nv, m.nu, 1)
        u_f, u_m, u_d, u_g, u_a = jnp.split(
            jax.random.uniform(k_model, (sum(sizes),)), np.cumsum(sizes)[:-1]
        )
        fields = tuple(OBSERVATION_FIELDS)
        u_n = field_uniforms(k_noise, fields)
        noise = jnp.stack([draw_from(u_n[i], c.noise(name)) for i, name in enumerate(fields)])
        delays = jnp.asarray(c.action_delay, jnp.int32)
        pick = jnp.minimum((u_a[0] * len(c.action_delay)).astype(jnp.int32), delays.size - 1)
        return self._scaled(draw_from(u_f[0], c.friction), draw_from(u_m, c.body_mass),
                            draw_from(u_d, c.joint_damping), draw_from(u_g, c.actuator_gain),
                            noise, delays[pick])

    def fixed(
        self,
        friction: jax.Array | float = 1.0,
        body_mass: jax.Array | float = 1.0,
        joint_damping: jax.Array | float = 1.0,
        actuator_gain: jax.Array | float = 1.0,
        obs_noise_std: jax.Array | None = None,
        action_delay: jax.Array | int = 0,
    ) -> Draw:
        """One robot, not a range: every body, joint and actuator scaled by the same factor,
        the noise stds per field in registry order (None: none), a delay in control steps. The
        values may be traced, so one compiled rollout sweeps any of them (the robustness
        envelope); a delay beyond the config's longest has no command in flight to apply."""
        noise = (jnp.zeros(len(OBSERVATION_FIELDS)) if obs_noise_std is None
                 else jnp.asarray(obs_noise_std, jnp.float32))
        f32 = functools.partial(jnp.asarray, dtype=jnp.float32)
        return self._scaled(f32(friction), f32(body_mass), f32(joint_damping), f32(actuator_gain),
                            noise, jnp.asarray(action_delay, jnp.int32))

    def _scaled(self, friction: jax.Array, mass_scale: jax.Array, damping: jax.Array,
                gain_scale: jax.Array, noise: jax.Array, action_delay: jax.Array) -> Draw:
        """The nominal model scaled: sliding friction by one factor; masses (their inertias and
        subtree masses with them), damping and actuator gains per body, dof and actuator, or each
        by one factor. A position servo's kp also sits in its bias: scaled with its gain."""
        m = self._model
        mass_scale = jnp.broadcast_to(mass_scale, m.body_mass.shape)
        mass = m.body_mass * mass_scale
        return Draw(
            geom_friction=m.geom_friction.at[:, 0].multiply(friction),
            body_mass=mass,
            body_inertia=m.body_inertia * mass_scale[:, None],
            body_subtreemass=self._subtree @ mass,
            dof_damping=m.dof_damping * damping,
            actuator_gainprm=m.actuator_gainprm.at[:, 0].multiply(gain_scale),
            actuator_biasprm=m.actuator_biasprm.at[:, 1].multiply(
                jnp.where(self._servo, gain_scale, 1.0)),
            obs_noise_std=noise,
            action_delay=action_delay,
        )

    def apply(self, draw: Draw) -> mjx.Model:
        """The nominal mjx model with this draw's fields swapped in."""
        return self._model.replace(**{f: getattr(draw, f) for f in MODEL_FIELDS})
