"""
Running a node whose control loop has its own thread, and what the nodes share.

rclpy's own signal handler shuts the context down on SIGINT, after which nothing can be
published; a robot node must still send its safe action then. So `run_node` takes SIGINT and
SIGTERM itself: the executor spins in the main thread, the node's `run(stop)` in a control
thread, and on a signal the node's `shutdown()` publishes before the context goes.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.signals import SignalHandlerOptions

from crl_runtime.parameters import ParameterError


class NodeStartupError(RuntimeError):
    """The node cannot run (policy, robot config, parameters); one line saying what to fix."""


def default_controller(kind: str, interface: str = "forward") -> str:
    """Name the ros2_control controller for an action kind and a command interface."""
    if interface == "trajectory":
        return "joint_trajectory_controller"
    return f"forward_{kind}_controller"


def command_topic(controller: str, interface: str) -> str:
    """Name the topic a ros2_control controller takes commands on."""
    return f"/{controller}/" + ("joint_trajectory" if interface == "trajectory" else "commands")


def run_node(make: Callable[[], Any], args: list[str] | None = None) -> int:
    """
    Run the node `make()` builds until SIGINT/SIGTERM or its control thread ends.

    Return the exit status: 1 for a NodeStartupError (printed as one line), else the node's
    `exit_code`.
    """
    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        node = make()
    except (NodeStartupError, ParameterError) as e:
        print(f"[FATAL] [{sys.argv[0].rsplit('/', 1)[-1]}]: {e}", file=sys.stderr, flush=True)
        rclpy.try_shutdown()
        return 1
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    control = threading.Thread(target=node.run, args=(stop,), name="crl-control", daemon=True)
    control.start()
    try:
        while not stop.is_set() and control.is_alive():
            executor.spin_once(timeout_sec=0.05)
    finally:
        stop.set()
        control.join(timeout=5.0)
        node.shutdown()
        time.sleep(0.1)  # hand the last messages to the middleware before it goes
        node.destroy_node()
        rclpy.try_shutdown()
    return int(node.exit_code)
