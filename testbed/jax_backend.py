"""JAX backend: the trained networks straight from a run directory.

For debugging and for parity checks of the exported files against the networks that were
trained; a robot does not need it, so it is the testbed's, given to `load_policy` (backend
"jax") through the `crl.backends.run` entry point. jax and crl.train are imported inside the
loader only.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from crl.core.policy_file import ACTION
from crl.core.spec import PolicySpec
from crl.runtime.backend import PolicyError, check_inputs


class JaxPolicy:
    """The deterministic actor (and, when the params have them, the critic encoders), jitted."""

    backend = "jax"

    def __init__(self, params: Mapping[str, Any], spec: PolicySpec) -> None:
        import jax
        import jax.numpy as jnp

        from crl.train.networks import Actor, Encoder, deterministic_action, network_config

        if spec.network is None:
            raise PolicyError("spec.network: missing; the JAX backend needs the network shape")
        # The spec's depth and width are the actor's; the encoders take the critic's shape.
        config = network_config(spec.network, params)
        actor, encoder = Actor(config, spec.act_dim), Encoder(config)
        critic = "sa_encoder" in params and "g_encoder" in params
        keys = ("actor", "sa_encoder", "g_encoder") if critic else ("actor",)
        self._params = jax.device_put({k: params[k] for k in keys})
        self._spec = spec
        self._outputs = (ACTION, "phi", "psi", "distance") if critic else (ACTION,)
        self._weight_bytes: int = sum(
            int(np.prod(np.shape(x))) * np.dtype(x.dtype).itemsize
            for x in jax.tree_util.tree_leaves(self._params["actor"])
        )

        def act(p: Any, obs: jax.Array, goal: jax.Array) -> jax.Array:
            return deterministic_action(actor, p["actor"], obs, goal)

        def run(p: Any, obs: jax.Array, goal: jax.Array) -> dict[str, jax.Array]:
            a = act(p, obs, goal)
            out = {ACTION: a}
            if critic:
                sa = jnp.concatenate([obs, a], -1)
                phi = jnp.asarray(encoder.apply({"params": p["sa_encoder"]}, sa))
                psi = jnp.asarray(encoder.apply({"params": p["g_encoder"]}, goal))
                out |= {"phi": phi, "psi": psi, "distance": jnp.linalg.norm(phi - psi, axis=-1)}
            return out

        self._act: Callable[..., Any] = jax.jit(act)
        self._run: Callable[..., Any] = jax.jit(run)

    @property
    def spec(self) -> PolicySpec:
        return self._spec

    @property
    def outputs(self) -> tuple[str, ...]:
        return self._outputs

    @property
    def weight_bytes(self) -> int:
        return self._weight_bytes

    @property
    def precision(self) -> str:
        return "fp32"

    def act(self, observation: ArrayLike, goal: ArrayLike) -> NDArray[np.float32]:
        obs, g, single = check_inputs(self._spec, observation, goal)
        action = np.asarray(self._act(self._params, obs, g))
        return action[0] if single else action

    def run(self, observation: ArrayLike, goal: ArrayLike) -> dict[str, NDArray[np.float32]]:
        obs, g, single = check_inputs(self._spec, observation, goal)
        out = {k: np.asarray(v) for k, v in self._run(self._params, obs, g).items()}
        return {k: (v[0] if single else v) for k, v in out.items()}


def load_jax_policy(run_dir: str | Path, step: int | None = None) -> JaxPolicy:
    """The policy of a training run directory at checkpoint `step` (latest if None)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise PolicyError(
            f"{run_dir}: the jax backend loads a run directory (runs/<name>), not a file; use "
            "backend 'ort' or 'trt' for exported policies"
        )
    try:
        from crl.train.checkpoint import CheckpointError, load_run
    except ImportError as e:
        from crl.core.usage import extra_of, needs

        if extra_of(e) == "train":
            raise PolicyError(needs("backend 'jax'", "train")) from None
        raise PolicyError(f"the jax backend needs crl.train.checkpoint ({e})") from None
    try:
        run = load_run(run_dir, step)
    except CheckpointError as e:
        raise PolicyError(str(e)) from None
    return JaxPolicy(run.params, run.spec)
