"""Process-wide settings jax and MJX need, applied by one call instead of by importing a module.

`setup_jax()` does two things that change the whole process, so every command that runs jax
(crl-train, crl-sim, crl-export onnx, the bench scripts, the sim robot, the tests' conftest)
calls it first, before jax compiles anything; importing a crl module changes nothing. It is
idempotent.

- XLA:CPU's concurrency-optimized scheduler deadlocks (every thread waits on a futex, forever)
  running the ant's contact step with 256 or more vmapped envs (jax 0.10.2; 64 ran). Passed as a
  per-jit compiler option it did not help, so it goes into XLA_FLAGS, which XLA reads once, when
  jax first starts a backend: called after that, `setup_jax()` warns, as it is too late.
- MJX's `deriv_smooth_vel` gets MuJoCo C's rule for force-clamped actuators
  (`crl.sim.mjx.apply_mjx_patch`), so training steps the servos as MuJoCo C and a real robot do.
  It takes effect for what is traced after it.
"""

from __future__ import annotations

import os
import warnings

CPU_SCHEDULER_FLAG = "--xla_cpu_enable_concurrency_optimized_scheduler=false"


def _backends_started() -> bool:
    """Whether jax has already made its backends (then XLA_FLAGS is read and set too late).

    jax has no public way to ask; its private one may move, and then only the warning is lost."""
    try:
        from jax._src.xla_bridge import backends_are_initialized
    except ImportError:
        return False
    return bool(backends_are_initialized())


def configure_xla() -> None:
    """Put `CPU_SCHEDULER_FLAG` into XLA_FLAGS unless it names that option already; warn when
    jax has started, so the flag comes too late for this process."""
    name = CPU_SCHEDULER_FLAG.split("=")[0]
    if name in os.environ.get("XLA_FLAGS", ""):
        return
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {CPU_SCHEDULER_FLAG}".strip()
    if _backends_started():
        warnings.warn(
            f"crl.sim.setup.setup_jax() was called after jax started, too late for XLA_FLAGS to "
            f"take {CPU_SCHEDULER_FLAG}: contact-rich tasks with 256+ envs may hang on the CPU; "
            "call setup_jax() before running jax, or set XLA_FLAGS before starting Python",
            RuntimeWarning,
            stacklevel=3,
        )


def setup_jax() -> None:
    """Apply crl's process-wide jax and MJX settings (module docstring); call it before jax
    first compiles. Idempotent."""
    configure_xla()
    from crl.sim.mjx import apply_mjx_patch

    apply_mjx_patch()
