"""Which MJX implementation steps the envs: `jax` (the default, any device) or `warp`.

`warp` is MJX's MuJoCo Warp backend (`mjx.put_model(m, impl="warp")`): NVIDIA Warp kernels
called from jax through XLA's FFI, written for NVIDIA GPUs. What MJX 3.17 requires of it, from
its source (`mujoco/mjx/...` in the installed package):

- the `warp-lang` package: `mujoco-mjx[warp]` pins it (warp-lang==1.18.0 for MJX 3.17.0), and
  without it `put_model` raises "warp-lang is not installed" (`_src/io.py`,
  `_check_warp_installed`). MuJoCo Warp itself ships inside MJX (`mjx/third_party/mujoco_warp`),
  so there is no separate `mujoco-warp` package to install.
- a CUDA device or the CPU (`_src/io.py`, `_check_impl_device_compatibility`). crl asks for the
  GPU: warp's CPU kernels are not what `--physics warp` is for, and nobody has run them here.
- one `Data` per batch: contacts live in one buffer shared by all vmapped worlds, `naconmax`
  long (`put_data`'s docstring), and MJX's batching rule keeps those fields unbatched
  (`warp/types.py`, `DATA_NON_VMAP`). So a reset must merge with `Data.where` (`warp/ffi.py`
  names it in its error), and the buffer must be sized for the whole batch (`GoalReachEnv`'s
  `worlds`). An SPMD program that splits envs across devices would split that buffer too, and
  the FFI call has no partitioning rule: one device only.

`check_physics` runs before any model compiles, so a machine that cannot run `warp` says so in
one line (a ConfigError) instead of failing inside a trace.
"""

from __future__ import annotations

import importlib.metadata
import inspect
from collections.abc import Iterable

import mujoco

from crl.core.usage import ConfigError

PHYSICS: tuple[str, ...] = ("jax", "warp")
# Observation fields computed from the centre-of-mass quantities (`mjx.com_pos`, `mjx.com_vel`),
# which the env recomputes after every step for them (`GoalReachEnv._kinematics`).
COM_OBSERVATIONS: tuple[str, ...] = ("cinert", "cvel", "body_lin_vel")
# The fields the warp backend cannot compute: MJX 3.17's `com_vel` has no warp path and raises
# "com_vel requires JAX backend implementation" (mujoco/mjx/_src/smooth.py, com_vel).
WARP_UNSUPPORTED_OBSERVATIONS: tuple[str, ...] = COM_OBSERVATIONS


def warp_install_hint() -> str:
    """The pip line that installs what MJX's warp backend imports, for this MuJoCo version."""
    return f'pip install "mujoco-mjx[warp]=={mujoco.__version__}" (the warp-lang package)'


def check_physics(
    physics: str, *, observation: Iterable[str] = (), devices: int = 1
) -> None:
    """Raise ConfigError (one line) unless `physics` can step envs here: its name, the packages,
    MJX's `impl=` support, an NVIDIA GPU visible to jax, one device, and the task's observation.

    The task-level refusal comes first (installing warp would not help it); then what the
    machine lacks, in the order a user would fix it."""
    if physics not in PHYSICS:
        raise ConfigError(f"physics: {physics!r} is not one of {', '.join(PHYSICS)}")
    if physics == "jax":
        return
    observed = [f for f in observation if f in WARP_UNSUPPORTED_OBSERVATIONS]
    if observed:
        raise ConfigError(
            f"physics: warp cannot compute the observed {'/'.join(observed)}: MJX "
            f"{mujoco.__version__}'s com_vel has no warp implementation; use --physics jax"
        )
    if devices > 1:
        raise ConfigError(
            f"physics: warp runs on one device, not {devices}: its contacts share one buffer "
            "across all envs, which the env-sharded program cannot split; pass --devices 1"
        )
    from crl.sim.mjx import mjx

    if "impl" not in inspect.signature(mjx.put_model).parameters:
        raise ConfigError(
            f"physics: MJX {mujoco.__version__} has no put_model(impl=...), so no warp backend; "
            "install mujoco-mjx >= 3.3"
        )
    try:
        importlib.metadata.version("warp-lang")
    except importlib.metadata.PackageNotFoundError:
        raise ConfigError(
            f"physics: warp needs NVIDIA Warp, which is not installed: {warp_install_hint()}"
        ) from None
    import mujoco.mjx.warp as mjxw

    if not mjxw.WARP_INSTALLED or mjxw.mujoco_warp is None:
        raise ConfigError(
            "physics: warp-lang is installed but MJX could not import it or its MuJoCo Warp "
            f"(see 'Failed to import' above); reinstall with {warp_install_hint()}"
        )
    import jax

    if jax.default_backend() != "gpu" or not _cuda_devices():
        raise ConfigError(
            f"physics: warp needs an NVIDIA GPU, and jax sees none (backend "
            f"{jax.default_backend()!r}): install jax with CUDA (the train-gpu extra) or use "
            "--physics jax"
        )


def _cuda_devices() -> bool:
    """Whether jax has a CUDA device (a ROCm GPU is "gpu" too, and warp does not run on it)."""
    import jax

    try:
        return bool(jax.devices("cuda"))
    except RuntimeError:
        return False
