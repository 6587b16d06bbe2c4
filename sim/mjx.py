"""MuJoCo MJX, imported quietly.

Without NVIDIA Warp installed, `import mujoco.mjx` prints "Failed to import warp" to stdout; crl
uses MJX's jax implementation only, and stdout belongs to the commands (`crl-sim info` prints a
spec there). Every crl module takes `mjx` from here.
"""

import contextlib
import io

with contextlib.redirect_stdout(io.StringIO()):
    from mujoco import mjx

__all__ = ["mjx"]
