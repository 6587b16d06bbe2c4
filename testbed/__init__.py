"""Testbed floor, above the runtime: the workstation's harnesses that drive the runtime as a robot
would be driven (the MuJoCo sim robot, the scored closed loop, the loop bench and its loopback
robot, the JAX debugging backend). They may need jax; a robot installs none of it.
"""
