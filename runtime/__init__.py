"""Runtime stage: inference backends, control loop, safety, transports (no jax here)."""

from crl.runtime.policy import BACKENDS, Policy, PolicyError, load_policy

__all__ = ["BACKENDS", "Policy", "PolicyError", "load_policy"]
