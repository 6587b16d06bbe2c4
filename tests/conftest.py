"""Test session setup.

`crl.sim.env` puts the XLA:CPU scheduler flag it needs into XLA_FLAGS when imported, which only
takes effect before jax first compiles; importing it here, before any test module runs jax,
makes that hold for the whole session whatever order the modules run in. Where jax is absent
(the robot's Python 3.10 venv of `make test-robot`: no train extra) there is nothing to set up,
and the tests that need jax skip, saying so.
"""

import importlib.util

if importlib.util.find_spec("jax") is not None:
    import crl.sim.env  # noqa: F401
