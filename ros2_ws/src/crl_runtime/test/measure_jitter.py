"""
Measure control-loop period jitter in rclpy: a timer against a dedicated thread.

Not a test (pytest does not collect it): the numbers behind goal_reach's choice of a dedicated
control thread. Each mode runs a 25 Hz loop whose tick runs a policy and publishes a command,
while a second process publishes joint states at 100 Hz that the node subscribes to (the
executor's load on a robot). The error is wake-up time minus deadline. Run it inside a private
network namespace, with the package installed and sourced:

    unshare -n bash -c 'ip link set lo up; export ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST \
        ROS_DOMAIN_ID=77; python ros2_ws/src/crl_runtime/test/measure_jitter.py POLICY.onnx'
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import numpy as np

RATE = 25.0
SECONDS = 20.0
SWITCH_S = 0.0005


def robot() -> None:
    """Publish joint states at 100 Hz until killed."""
    import rclpy
    from sensor_msgs.msg import JointState

    rclpy.init()
    node = rclpy.create_node("jitter_robot")
    pub = node.create_publisher(JointState, "/joint_states", 10)
    msg = JointState(name=["shoulder", "elbow"], position=[0.1, 0.2], velocity=[0.0, 0.0])
    while True:
        msg.header.stamp = node.get_clock().now().to_msg()
        pub.publish(msg)
        time.sleep(0.01)


def measure(mode: str, policy_path: str) -> np.ndarray:
    """Run the loop in `mode` (timer or thread) for SECONDS; return the wake-up errors (s)."""
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from sensor_msgs.msg import JointState
    from std_msgs.msg import Float64MultiArray

    from crl.runtime.controller import Stats
    from crl.runtime.loop import FixedRateLoop
    from crl.runtime.policy import load_policy

    policy = load_policy(policy_path, "ort")
    obs = np.zeros(policy.spec.obs_dim, np.float32)
    goal = np.zeros(policy.spec.goal_dim, np.float32)
    rclpy.init()
    node = rclpy.create_node(f"jitter_{mode}")
    pub = node.create_publisher(Float64MultiArray, "/commands", 1)
    received = [0]
    node.create_subscription(JointState, "/joint_states",
                             lambda _m: received.__setitem__(0, received[0] + 1), 1)
    period = 1.0 / RATE
    errors: list[float] = []

    def work() -> None:
        action = policy.act(obs, goal)
        pub.publish(Float64MultiArray(data=[float(v) for v in action]))

    executor = SingleThreadedExecutor()
    executor.add_node(node)
    stop = threading.Event()
    time.sleep(1.0)  # discovery
    if mode == "timer":
        start = time.monotonic()
        count = [0]

        def on_timer() -> None:
            count[0] += 1
            errors.append(time.monotonic() - (start + count[0] * period))
            work()

        node.create_timer(period, on_timer)
        end = time.monotonic() + SECONDS
        while time.monotonic() < end:
            executor.spin_once(timeout_sec=0.1)
    else:
        # The control thread waits for the GIL whenever the executor thread runs Python code;
        # a short switch interval bounds that wait (the default is 5 ms).
        sys.setswitchinterval(SWITCH_S)
        stats = Stats()

        def control() -> None:
            FixedRateLoop(period, stats).run(lambda d, n: work(), stop)

        thread = threading.Thread(target=control, daemon=True)
        thread.start()
        end = time.monotonic() + SECONDS
        while time.monotonic() < end:
            executor.spin_once(timeout_sec=0.1)
        stop.set()
        thread.join()
        errors = stats.period_error.values().tolist()
    print(f"{mode}: {len(errors)} ticks, joint states received {received[0]}", file=sys.stderr)
    node.destroy_node()
    rclpy.shutdown()
    return np.asarray(errors)


def main() -> None:
    """Measure both modes with the 100 Hz publisher running; print one line per mode."""
    if sys.argv[1:2] == ["--robot"]:
        robot()
        return
    if sys.argv[1:2] == ["--mode"]:
        # The first tick is left out: it pays for one-off setup (the loop's gc.collect, the
        # first inference), not for the scheduling being compared.
        e = measure(sys.argv[2], sys.argv[3])[1:] * 1e3
        print(f"{sys.argv[2]:6s} period error over {len(e)} ticks: p50 {np.percentile(e, 50):.3f} "
              f"ms, p99 {np.percentile(e, 99):.3f} ms, max {e.max():.3f} ms")
        return
    pub = subprocess.Popen([sys.executable, __file__, "--robot"])
    try:
        for mode in ("timer", "thread", "timer", "thread"):
            subprocess.run([sys.executable, __file__, "--mode", mode, sys.argv[1]], check=True)
    finally:
        pub.kill()
        pub.wait()


if __name__ == "__main__":
    main()
