"""Runtime stage: inference backends, control loop, safety, transports (no jax here)."""
