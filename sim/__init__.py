"""Simulation stage: MJX goal-reaching tasks, robot models, domain randomization.

Importing `crl.sim` is cheap and jax-free so a robot can find the robot models in its assets;
the MJX envs live in submodules (`crl.sim.env`, `crl.sim.tasks`) that import jax and MuJoCo when
asked for. The sim robot that plays a real one is the testbed's (`crl-sim robot`).
"""
