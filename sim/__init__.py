"""Simulation stage: MJX goal-reaching tasks, robot models, domain randomization, the sim robot.

Importing `crl.sim` is cheap and jax-free so a robot can read `crl.sim.spec`; the MJX envs live
in submodules (`crl.sim.env`, `crl.sim.tasks`) that import jax and MuJoCo when asked for.
"""
