"""What every inference backend is and checks: the `Policy` interface, `PolicyError`, and the
input checks all backends share.

Inputs are checked here, once for all backends, because a NaN from a sensor or a goal of the wrong
size must be refused before it reaches a network that would silently return a plausible-looking
action. The backends import this module; `crl.runtime.policy` (the factory) imports the backends.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
from numpy.typing import ArrayLike, NDArray

from crl.core.spec import PolicySpec


class PolicyError(ValueError):
    """A policy that cannot be loaded or an input it cannot take; the message is one line naming
    the problem and what to do."""


class Policy(Protocol):
    """What every backend returns.

    `act` takes one observation [obs_dim] and goal [goal_dim] (→ action [act_dim]) or a batch
    [B, obs_dim], [B, goal_dim] (→ [B, act_dim]); actions are in [-1, 1], to be mapped with
    `spec.action.to_physical`. `run` returns every output the policy has: "action" and, for a
    critic export, "phi", "psi" and "distance" (‖φ(s, π(s, g)) − ψ(g)‖, small = reachable).
    """

    @property
    def spec(self) -> PolicySpec: ...

    @property
    def backend(self) -> str: ...

    @property
    def outputs(self) -> tuple[str, ...]: ...

    @property
    def precision(self) -> str:
        """"fp32", "fp16" or "int8": how the weights are stored and computed."""
        ...

    @property
    def weight_bytes(self) -> int:
        """Bytes of weights one call reads (what bounds batch-1 latency)."""
        ...

    def act(self, observation: ArrayLike, goal: ArrayLike) -> NDArray[np.float32]: ...

    def run(self, observation: ArrayLike, goal: ArrayLike) -> dict[str, NDArray[np.float32]]: ...


def check_inputs(
    spec: PolicySpec, observation: ArrayLike, goal: ArrayLike, max_batch: int | None = None
) -> tuple[NDArray[np.float32], NDArray[np.float32], bool]:
    """Validate shape, dtype and finiteness against the spec.

    Returns float32 [B, obs_dim], [B, goal_dim] arrays and whether the call was unbatched. It
    runs on every control tick, so the common case (float32 arrays, all finite) does no more than
    look at them; the per-field detail is worked out only for an error message.
    """
    obs = _as_float32(observation, "observation")
    g = _as_float32(goal, "goal")
    if obs.ndim != g.ndim or obs.ndim not in (1, 2):
        raise PolicyError(
            f"observation {obs.shape} and goal {g.shape}: pass one [obs_dim], [goal_dim] pair or "
            f"a batch [B, obs_dim], [B, goal_dim] (obs_dim {spec.obs_dim}, goal_dim "
            f"{spec.goal_dim})"
        )
    single = obs.ndim == 1
    if single:
        obs, g = obs[None], g[None]
    for name, x, size in (("observation", obs, spec.obs_dim), ("goal", g, spec.goal_dim)):
        if x.shape[1] != size:
            raise PolicyError(
                f"{name}: got {x.shape[1]} values, the policy's spec ({spec.task!r}) expects "
                f"{size}; assemble it from the spec's {name} fields"
            )
    if obs.shape[0] != g.shape[0]:
        raise PolicyError(f"observation batch {obs.shape[0]} != goal batch {g.shape[0]}")
    if max_batch is not None and obs.shape[0] > max_batch:
        raise PolicyError(
            f"batch {obs.shape[0]} exceeds this engine's max batch {max_batch}; rebuild it with "
            "`crl-export tensorrt --max-batch N` or split the batch"
        )
    if not (np.isfinite(obs).all() and np.isfinite(g).all()):
        for name, x, slices in (("observation", obs, spec.observation_slices()),
                                ("goal", g, spec.goal_slices())):
            bad = [f for f, s in slices.items() if not np.isfinite(x[:, s]).all()]
            if bad:
                raise PolicyError(
                    f"{name}: non-finite values (NaN, inf or beyond float32) in field(s) "
                    f"{', '.join(bad)}; check the sensor or the goal source"
                )
    return obs, g, single


def _as_float32(x: ArrayLike, name: str) -> NDArray[np.float32]:
    if isinstance(x, np.ndarray) and x.dtype == np.float32 and x.flags.c_contiguous:
        return x
    a = np.asarray(x)
    if a.dtype.kind not in "fiu":
        raise PolicyError(f"{name}: dtype {a.dtype} is not a real number type; pass float32")
    with np.errstate(over="ignore"):  # values beyond float32 become inf, refused just after
        return np.ascontiguousarray(a, dtype=np.float32)
