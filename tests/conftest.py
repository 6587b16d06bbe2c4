"""Test session setup.

`crl.sim.env` puts the XLA:CPU scheduler flag it needs into XLA_FLAGS when imported, which only
takes effect before jax first compiles; importing it here, before any test module runs jax,
makes that hold for the whole session whatever order the modules run in.
"""

import crl.sim.env  # noqa: F401
