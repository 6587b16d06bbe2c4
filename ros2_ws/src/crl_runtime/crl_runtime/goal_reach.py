"""
ROS 2 node `goal_reach`: the runtime's controller with ROS messages in and out.

Joint states (and odometry) become the controller's observation, goals from RViz become its
goal, and each tick's command goes to a ros2_control controller: a forward command controller
(Float64MultiArray) or a joint_trajectory_controller (a one-point JointTrajectory), as the
robot config's command_interface says. Everything that decides what the robot does
(staleness, goal box, soft start, safe action, rate limits) is the controller's, so a robot
behaves the same under `crl-run serve` and under ROS.

Frames (REP-103/105): the policy's world frame is `world_frame` of the robot's tf tree (a
floating base's odom). Goals and odometry in it are taken as they are; in another frame they
are transformed through tf2 when tf2_ros is installed, and refused (counted, logged) without it.

Threads: the executor spins the subscriptions in the main thread; the control loop runs in a
dedicated thread, locked to the robot's joint states as `crl-run serve` is to its observations
(crl.runtime.loop.SampleLockedLoop: a tick fires as the joint state it expects arrives, the
loop's grid following the robot's clock, with a watchdog on this computer's clock when they
stop); a dedicated thread measured lower period jitter than an rclpy timer
(test/measure_jitter.py). A joint state callback converts its message, hands it to the
controller and signals the loop at once; a tick uses the newest.

Time: the loop, the staleness limit and the latency figures run on this computer's monotonic
clock; under `use_sim_time` they all run on the node clock (the simulator's /clock, read every
millisecond of real time, a reset's step back taken out), so a simulator slower or faster than
real time gets the policy's control rate in its own time.
On SIGINT/SIGTERM the node publishes the safe action once and exits.
"""

from __future__ import annotations

import hashlib
import math
import queue
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import Point, PointStamped, PoseStamped
from nav_msgs.msg import Odometry
from rclpy.node import Node
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import JointState
from std_msgs.msg import Float64MultiArray
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint
from visualization_msgs.msg import Marker, MarkerArray

from crl.runtime import robot_config
from crl.runtime.controller import STALL_PERIODS, Command, Controller
from crl.runtime.loop import (
    SIM_CLOCK_POLL_S,
    ArrivalSignal,
    SampleLockedLoop,
    SpareTime,
    SteppedClock,
    hold_wake_latency,
    set_realtime,
)
from crl.runtime.messages import new_session
from crl.runtime.observation import ObservationError
from crl.runtime.policy import PolicyError, load_policy
from crl.runtime.stamps import StampAges
from crl_runtime.convert import (
    BaseState,
    ConversionError,
    JointVelocities,
    apply_transform,
    box_edges,
    duration,
    goal_axes,
    goal_frame_error,
    goal_values,
    joint_state_to_observation,
    odometry_to_base,
    point_of,
    transform_base,
)
from crl_runtime.kinematics import GoalPoint
from crl_runtime.node_runner import (
    NodeStartupError,
    command_topic,
    default_controller,
    run_node,
)
from crl_runtime.parameters import GOAL_REACH, declare

# Newest message only, and both best-effort (sensor data) and reliable publishers match.
SENSOR_QOS = QoSProfile(depth=1, history=HistoryPolicy.KEEP_LAST,
                        reliability=ReliabilityPolicy.BEST_EFFORT)
COUNTERS = ("joint_states_received", "observation_malformed", "observation_oversized",
            "observation_nonfinite", "observation_no_velocity", "odometry_nonfinite",
            "odometry_wrong_frame", "sim_clock_stalls")
WAIT_LOG_S = 5.0
ACTING_MODES = ("soft_start", "goal_ramp", "running")  # the controller's modes that run the policy
# Under use_sim_time: real seconds without /clock moving before the node says the loop waits
# on a stopped simulator (or on none: a real robot's node started with use_sim_time:=true).
SIM_CLOCK_STALL_S = 2.0
# The control thread waits for the GIL while the executor thread runs Python code; the default
# switch interval (5 ms) would let that wait reach 5 ms (test/measure_jitter.py).
SWITCH_INTERVAL_S = 0.0005


def file_sha256(path: str) -> str:
    """Hash the policy file, so diagnostics say exactly which policy runs."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class GoalReach(Node):
    """The node; `run` is the control thread's body."""

    def __init__(self) -> None:
        super().__init__("goal_reach")
        self.params = p = declare(self, GOAL_REACH)
        # The loop's time base: this computer's monotonic clock, or under use_sim_time the
        # node clock, read often (it may run at any pace) and never going back (a reset).
        self.sim_time = bool(self.get_parameter("use_sim_time").value)
        self.loop_clock = SteppedClock(self.now_s) if self.sim_time else time.monotonic
        self.max_sleep_s = SIM_CLOCK_POLL_S if self.sim_time else math.inf
        self.controller = self._controller(p)
        c = self.controller
        spec = c.spec
        self.goal_frame = spec.goal.frame  # the spec's name for the policy's world frame
        self.world_frame = p["world_frame"] or self.goal_frame  # the tf tree's name for it
        self.interface = p["command_interface"] or c.config.command_interface
        if self.interface == "trajectory" and c.kind != "position":
            raise NodeStartupError(f"parameter command_interface: "
                                   f"{robot_config.trajectory_refusal(c.kind)}")
        try:
            self.axes = goal_axes(spec.goal.fields, p["goal_axes"])
        except ValueError as e:
            raise NodeStartupError(str(e)) from None
        self.policy_sha256 = file_sha256(p["policy"])
        self.lock = threading.Lock()  # the controller: ticks vs goal callbacks
        self.session = new_session()
        self.seq = 0
        self.counts = dict.fromkeys(COUNTERS, 0)
        self.started = threading.Event()  # the controller has its first observation
        self.arrivals = ArrivalSignal(self.loop_clock, self.max_sleep_s)  # for the loop
        # joint states' ages at arrival, the robot clock's offset out; a clock step as large as
        # half the staleness limit could age fresh data past it
        self.ages = StampAges(step_s=c.max_age / 2)
        self.first_arrival = math.nan  # loop_clock of the one that started the controller
        self.waiting_for = f"no joint states on {p['joint_states_topic']} yet"
        self.velocities = JointVelocities()  # for joint states that carry positions only
        self.base: BaseState | None = None
        self.needs_base = bool(c.assembler.requirements.base)
        self.required = c.assembler.requirements.joints
        self.critic = "distance" in c.policy.outputs
        self.goal_point = self._goal_point()
        self.exit_code = 0

        controller = p["controller"] or default_controller(c.kind, self.interface)
        self.command_topic = p["command_topic"] or command_topic(controller, self.interface)
        self.trajectory = self.interface == "trajectory"
        self.time_from_start = duration(c.period)  # of a trajectory point: one control period
        self.command_pub = self.create_publisher(
            JointTrajectory if self.trajectory else Float64MultiArray, self.command_topic, 1)
        self.diag_pub = self.create_publisher(DiagnosticArray, p["diagnostics_topic"], 10)
        self.marker_pub = self.create_publisher(MarkerArray, p["markers_topic"], 1)
        self.create_subscription(JointState, p["joint_states_topic"], self._on_joint_state,
                                 SENSOR_QOS)
        if self.needs_base:
            self.create_subscription(Odometry, p["odom_topic"], self._on_odometry, SENSOR_QOS)
        self.create_subscription(PoseStamped, p["goal_pose_topic"], self._on_goal, 10)
        self.create_subscription(PointStamped, p["clicked_point_topic"], self._on_goal, 10)
        self.tf_buffer, self._tf_listener = self._tf()
        self.tf_goals: queue.Queue[Any] = queue.Queue(maxsize=8)
        if self.tf_buffer is not None:
            threading.Thread(target=self._tf_worker, name="crl-goal-tf", daemon=True).start()
        if self.sim_time:  # on this computer's clock: the node clock may stand still
            from rclpy.clock import Clock, ClockType

            self.sim_clock_seen = (time.monotonic(), self.now_s())
            self.create_timer(SIM_CLOCK_STALL_S / 2, self._check_sim_clock,
                              clock=Clock(clock_type=ClockType.STEADY_TIME))
        frames = (f"{self.world_frame!r}" if self.world_frame == self.goal_frame else
                  f"{self.world_frame!r} (the policy's {self.goal_frame!r})")
        frames += (", other frames through tf2" if self.tf_buffer is not None else
                   " only (tf2_ros is not installed: no other frame can be transformed)")
        self.get_logger().info(
            f"policy {p['policy']} ({c.policy.backend}, sha256 {self.policy_sha256[:12]}), "
            f"task {spec.task}, {c.rate_hz:g} Hz"
            f"{' of simulated time (use_sim_time: /clock)' if self.sim_time else ''}, "
            f"goals in {frames} ({self.axes}) "
            f"on {p['goal_pose_topic']} and {p['clicked_point_topic']}, commands "
            f"({self.interface}, {c.kind}) on {self.command_topic} for joints "
            f"{list(c.command_joints)}")

    # -- setup -----------------------------------------------------------------------------

    def _controller(self, p: dict[str, Any]) -> Controller:
        if not p["policy"]:
            raise NodeStartupError("parameter policy: name the policy file (policy:=policy.onnx)")
        if not Path(p["policy"]).is_file():
            raise NodeStartupError(f"parameter policy: {p['policy']}: no such file")
        try:
            policy = load_policy(p["policy"], p["backend"])
            config = robot_config.load(p["robot_config"] or policy.spec.task)
            overrides = {k: (p[k] if p[k] >= 0 else None) for k in
                         ("max_observation_age", "goal_margin", "max_action_change",
                          "soft_start", "max_joint_speed")}
            overrides["safe_action"] = p["safe_action"] or None
            config = config.replace_safety(**overrides)
            return Controller(policy, config, clock=self.loop_clock)
        except (PolicyError, robot_config.RobotConfigError, ObservationError) as e:
            raise NodeStartupError(str(e)) from None

    def _goal_point(self) -> GoalPoint | None:
        config, fields = self.controller.config, self.controller.spec.goal.fields
        name = str(fields[0].name).rsplit("_", 1)[0]
        if config.model is None or len(fields) != 1:
            return None
        try:
            return GoalPoint(str(config.model), name)
        except ValueError as e:
            self.get_logger().info(f"no achieved-goal marker: {e}")
            return None

    def _tf(self) -> tuple[Any, Any]:
        try:
            import tf2_ros
        except ImportError:
            return None, None
        buffer = tf2_ros.Buffer()
        return buffer, tf2_ros.TransformListener(buffer, self, spin_thread=True)

    def now_s(self) -> float:
        """Read the node clock (ROS time, or /clock under use_sim_time) in seconds."""
        return self.get_clock().now().nanoseconds * 1e-9

    # -- callbacks (executor thread) --------------------------------------------------------

    def _on_joint_state(self, msg: JointState) -> None:
        """
        Convert at once and hand it to the controller (newest wins).

        Refusing here, before the controller holds it, means a bad message never displaces a
        good one the next tick has not used yet. Its age is measured on the node clock (stamp
        against the clock at arrival, the robot clock's offset taken out: `StampAges`) and
        carried onto the clock the loop runs on, never later than its arrival. A message without
        velocities gets them by finite differences over the stamps (`JointVelocities`); the
        first such one has no previous position, so the controller starts on the second.
        """
        received, received_ros = self.loop_clock(), self.now_s()
        self.counts["joint_states_received"] += 1
        self.seq += 1
        try:
            obs = joint_state_to_observation(msg, received_ros, self.session, self.seq,
                                             self.base if self.needs_base else None,
                                             self.required, self.velocities)
        except ConversionError as e:
            self.counts[f"observation_{e.reason}"] += 1
            if not self.started.is_set():
                self.waiting_for = (f"joint states arrive on {self.params['joint_states_topic']} "
                                    f"but are refused ({e})")
            self.get_logger().warning(f"joint state refused: {e}",
                                      throttle_duration_sec=WAIT_LOG_S)
            return
        obs_time = received - self.ages.age(self.session, obs.stamp, received_ros - received,
                                            received)
        with self.lock:
            if self.started.is_set():
                self.controller.observe(obs, obs_time, received)
                self.arrivals.note(received)
                return
            try:
                self.controller.start(obs, obs_time, received)
            except ObservationError as e:
                self.waiting_for = f"the robot's joint states do not fit the policy: {e}"
                return
        self.first_arrival = received
        self.started.set()

    def _on_odometry(self, msg: Odometry) -> None:
        base: BaseState | None = odometry_to_base(msg, self.now_s())
        frame = msg.header.frame_id
        if frame != self.world_frame:
            base = self._base_in_world(frame, base)
            if base is None:
                return
        values = (base.pos, base.quat, base.lin_vel, base.ang_vel)
        if not all(np.isfinite(v).all() for v in values):
            self.counts["odometry_nonfinite"] += 1
            return
        self.base = base

    def _base_in_world(self, frame: str, base: BaseState) -> BaseState | None:
        """
        Bring odometry stamped in another frame into world_frame, or refuse it (None).

        The newest transform is taken without waiting (this is the executor thread); a refusal
        is counted and logged, throttled, naming both frames.
        """
        if self.tf_buffer is None:
            why = "tf2_ros is not installed to transform it"
        else:
            from rclpy.time import Time

            try:
                t = self.tf_buffer.lookup_transform(self.world_frame, frame, Time())
                return transform_base(base, t.transform)
            except Exception as e:  # tf2's lookup, connectivity and extrapolation errors
                why = f"there is no transform ({type(e).__name__}: {e})"
        self.counts["odometry_wrong_frame"] += 1
        reason = (f"its pose is in frame {frame or '(empty)'!r}, the policy's base pose is in "
                  f"{self.world_frame!r} (world_frame), and {why}")
        if not self.started.is_set():
            self.waiting_for = (f"odometry arrives on {self.params['odom_topic']} but is "
                                f"refused ({reason})")
        self.get_logger().warning(f"odometry refused: {reason}", throttle_duration_sec=WAIT_LOG_S)
        return None

    def _on_goal(self, msg: PoseStamped | PointStamped) -> None:
        frame = msg.header.frame_id
        point = point_of(msg)
        if frame in (self.goal_frame, self.world_frame) or self.tf_buffer is None:
            why = "tf2_ros is not installed to transform it"
            self._set_goal(frame, point, why)
            return
        try:
            self.tf_goals.put_nowait((frame, point))
        except queue.Full:
            self._set_goal(frame, point, "goals arrive faster than they can be transformed")

    def _tf_worker(self) -> None:
        """Transform goals with a bounded wait, off the executor thread (sensor data flows)."""
        from rclpy.duration import Duration
        from rclpy.time import Time

        while rclpy.ok():
            frame, point = self.tf_goals.get()
            try:
                t = self.tf_buffer.lookup_transform(
                    self.world_frame, frame, Time(),
                    timeout=Duration(seconds=self.params["tf_timeout"]))
            except Exception as e:  # tf2's lookup, connectivity and extrapolation errors
                self._set_goal(frame, point, f"no transform within "
                               f"{self.params['tf_timeout']:g} s ({type(e).__name__}: {e})")
                continue
            self._set_goal(self.world_frame, apply_transform(t.transform, point), "")

    def _set_goal(self, frame: str, point: np.ndarray, why: str) -> None:
        """
        Hand a goal to the controller: in the policy's world frame, or refused for its frame.

        world_frame is the policy's goal frame under the tf tree's name; a goal in any other
        frame reaches the controller with that frame, which refuses and counts it.
        """
        values = goal_values(point, self.axes)
        in_world = frame in (self.goal_frame, self.world_frame)
        with self.lock:
            ok, reason = self.controller.set_goal(self.goal_frame if in_world else frame, values)
        log = self.get_logger()
        if ok:
            log.info(f"goal {np.round(values, 4).tolist()} in {frame!r} accepted")
        elif not in_world:
            log.warning(goal_frame_error(frame, self.world_frame, why))
        else:
            log.warning(f"goal {np.round(values, 4).tolist()} rejected: {reason}")

    def _check_sim_clock(self) -> None:
        """
        Say so (log, diagnostics WARN) while /clock stands still under use_sim_time.

        The loop then waits on it and sends no command, which is right for a paused simulator
        and wrong for a real robot started with use_sim_time:=true.
        """
        now, sim_now = time.monotonic(), self.now_s()
        seen, sim_seen = self.sim_clock_seen
        if sim_now != sim_seen:
            self.sim_clock_seen = (now, sim_now)
            return
        if now - seen < SIM_CLOCK_STALL_S:
            return
        self.counts["sim_clock_stalls"] += 1
        why = (f"use_sim_time: /clock has not moved for {now - seen:.0f} s (it reads "
               f"{sim_now:.3f} s): the control loop runs on the simulator's time and sends no "
               "command until it moves (a real robot runs with use_sim_time:=false)")
        self.get_logger().warning(why, throttle_duration_sec=WAIT_LOG_S)
        self.diag_pub.publish(self.diagnostics(warning=why))

    # -- the control thread ----------------------------------------------------------------

    def wait_for_robot(self, stop: threading.Event) -> bool:
        """Wait until a joint state started the controller; False when stopped or timed out."""
        timeout = self.params["startup_timeout"]
        deadline = time.monotonic() + timeout if timeout > 0 else math.inf
        last_log = 0.0
        while not stop.is_set() and not self.started.wait(0.005):
            now = time.monotonic()
            if now > deadline:
                self.get_logger().fatal(f"no usable joint state within {timeout:g} s: "
                                        f"{self.waiting_for}")
                return False
            if now - last_log > WAIT_LOG_S:
                self.get_logger().info(f"waiting for the robot: {self.waiting_for}")
                last_log = now
        return self.started.is_set()

    def run(self, stop: threading.Event) -> None:
        """Run the control loop until `stop` (the control thread's body)."""
        c, p = self.controller, self.params
        sys.setswitchinterval(SWITCH_INTERVAL_S)
        if p["realtime"]:
            self.get_logger().info(f"{set_realtime()}; {hold_wake_latency()}")
        if not self.wait_for_robot(stop):
            self.exit_code = 0 if stop.is_set() else 1
            stop.set()
            return
        self.get_logger().info("robot found; control loop running")
        diag_time = SpareTime(max(1, round(c.rate_hz / max(p["diagnostics_hz"], 1e-3))),
                              c.period, self.loop_clock)
        marker_time = SpareTime(max(1, round(c.rate_hz / max(p["markers_hz"], 1e-3))),
                                c.period, self.loop_clock)
        warm_time = SpareTime(1, c.period, self.loop_clock)  # after safe ticks
        with self.lock:
            failed = c.warm_up()
        if failed:
            self.get_logger().error(f"the policy failed its first call ({failed}); each tick it "
                                    "fails sends the safe action, counted in policy_errors; "
                                    "try it alone with `crl-run bench --policy FILE`")
        last_mode = ""

        def on_tick(deadline: float, now: float) -> None:
            nonlocal last_mode
            with self.lock:
                cmd = c.tick(now)
            self.publish_command(cmd)
            c.stats.end_to_end.add(self.loop_clock() - cmd.obs_received)
            if cmd.safe and warm_time.now(c.stats.counts["ticks"], deadline):
                with self.lock:  # as a tick that acts holds it
                    c.keep_warm()
            if cmd.mode != last_mode:
                self._log_mode(cmd.mode, last_mode)
                last_mode = cmd.mode
            ticks = c.stats.counts["ticks"]
            if diag_time.now(ticks, deadline):
                self.diag_pub.publish(self.diagnostics())
            if marker_time.now(ticks, deadline):
                self.marker_pub.publish(self.markers(cmd))

        loop = SampleLockedLoop(c.period, c.stats, self.arrivals, clock=self.loop_clock,
                                spin_s=0.0 if self.sim_time else p["spin_s"],
                                max_sleep_s=self.max_sleep_s)
        loop.run(on_tick, stop, start=self.first_arrival + c.period)

    def _log_mode(self, mode: str, previous: str) -> None:
        log = self.get_logger()
        if mode in ("stale", "fault"):
            log.warning(f"safe action ({mode}): " + (
                "no fresh joint state within the staleness limit" if mode == "stale"
                else "the policy failed or returned a non-finite action"))
        elif mode == "no_goal":
            log.info("holding: waiting for a goal")
        elif previous in ("stale", "fault", "no_goal", "") and mode in ACTING_MODES:
            log.info("policy acting")

    def publish_command(self, cmd: Command) -> None:
        """
        Send a command in the controller's command_joints order.

        forward: the values (rad or N·m) as a Float64MultiArray. trajectory: one point whose
        positions (rad) are reached one control period after the controller receives it (an
        unset header stamp means "on receipt"); the next tick's trajectory replaces it.
        """
        values = [float(v) for v in cmd.values]
        if not self.trajectory:
            self.command_pub.publish(Float64MultiArray(data=values))
            return
        point = JointTrajectoryPoint(positions=values)
        point.time_from_start.sec, point.time_from_start.nanosec = self.time_from_start
        self.command_pub.publish(JointTrajectory(joint_names=list(cmd.joints), points=[point]))

    def shutdown(self) -> None:
        """Leave the robot with the safe action (once), not the policy's last command."""
        if self.controller.latest is None:
            return
        with self.lock:
            cmd = self.controller.safe_command()
        self.publish_command(cmd)
        self.diag_pub.publish(self.diagnostics())
        self.get_logger().info(f"stopped: safe action sent on {self.command_topic}")

    # -- outputs ---------------------------------------------------------------------------

    def status(self) -> dict[str, float | int | str]:
        """Collect the controller's statistics and the node's counters in one flat map."""
        c = self.controller
        return {**c.stats.to_dict(), **self.counts, "backend": c.policy.backend,
                "policy_hz": c.rate_hz, "policy": self.params["policy"],
                "policy_sha256": self.policy_sha256, "command_topic": self.command_topic,
                "clock": "sim" if self.sim_time else "steady",
                "clock_steps_back": getattr(self.loop_clock, "steps_back", 0)}

    def diagnostics(self, warning: str = "") -> DiagnosticArray:
        """
        Build the diagnostics message; WARN for a fault, a stall, or with `warning`.

        A stall: no command for over STALL_PERIODS control periods since the last diagnostics
        (`max_gap_ms`, the longest gap between commands; `rate_hz` is over the last second).
        """
        stats = self.status()
        mode = str(stats["mode"])
        level, message = DiagnosticStatus.OK, {
            "running": "policy acting", "soft_start": "policy acting (soft start)",
            "goal_ramp": "policy acting (ramping in a new goal)",
            "no_goal": "holding: waiting for a goal", "stopped": "stopped"}.get(mode, "")
        gap_ms = float(stats["max_gap_ms"])
        if gap_ms > STALL_PERIODS * self.controller.period * 1e3:
            level, message = DiagnosticStatus.WARN, f"stalled: no command for {gap_ms:.0f} ms"
        if mode in ("stale", "fault"):
            level, message = DiagnosticStatus.WARN, f"safe action: {mode}"
        if warning:
            level, message = DiagnosticStatus.WARN, warning
        status = DiagnosticStatus(level=level, name="crl_runtime: goal_reach",
                                  message=message, hardware_id=self.controller.spec.task)
        status.values = [KeyValue(key=k, value=_text(v)) for k, v in stats.items()]
        msg = DiagnosticArray()
        msg.header.stamp = self.get_clock().now().to_msg()
        msg.status = [status]
        return msg

    def markers(self, cmd: Command) -> MarkerArray:
        """Draw the goal (success radius), the goal box, the achieved goal and reachability."""
        c = self.controller
        stamp = self.get_clock().now().to_msg()
        out = MarkerArray()
        goal = c.goal
        latest = c.latest
        achieved = None
        if self.goal_point is not None and latest is not None:
            achieved = self.goal_point.position(latest)
        diameter = 2.0 * c.spec.success_radius
        out.markers.append(self._sphere(0, "goal", stamp, None if goal is None else
                                        self._point3(goal, achieved), diameter,
                                        (0.1, 0.8, 0.2, 0.6)))
        out.markers.append(self._sphere(1, "achieved_goal", stamp, achieved, 0.5 * diameter,
                                        (0.2, 0.4, 1.0, 0.9)))
        out.markers.append(self._goal_box(stamp))
        text = Marker(ns="reachability", id=2, type=Marker.TEXT_VIEW_FACING)
        text.header.frame_id, text.header.stamp = self.world_frame, stamp
        distance = self._critic_distance() if self.critic and cmd.mode == "running" else None
        if goal is None or distance is None:
            text.action = Marker.DELETE
        else:
            position = self._point3(goal, achieved)
            text.pose.position.x, text.pose.position.y = position[0], position[1]
            text.pose.position.z = position[2] + 2.0 * diameter
            text.pose.orientation.w = 1.0
            text.scale.z = max(diameter, 0.02)
            text.color.r = text.color.g = text.color.b = text.color.a = 1.0
            text.text = f"critic distance {distance:.2f}"
        out.markers.append(text)
        return out

    def _critic_distance(self) -> float | None:
        """Evaluate the critic's distance ||phi(s, pi(s, g)) - psi(g)|| (small: reachable)."""
        c = self.controller
        with self.lock:
            if c.goal is None or c.latest is None:
                return None
            x = c.policy_input()
            goal = c.goal.copy()
        try:
            return float(np.asarray(c.policy.run(x, goal)["distance"]).reshape(-1)[0])
        except Exception:  # a marker must never stop the control loop
            return None

    def _point3(self, goal: np.ndarray, achieved: np.ndarray | None) -> np.ndarray:
        """Place the goal in 3-D: its axes from the goal, the others from the achieved goal."""
        point = np.zeros(3) if achieved is None else achieved.copy()
        for i, axis in enumerate(self.axes):
            point["xyz".index(axis)] = float(goal[i])
        return point

    def _goal_box(self, stamp: Any) -> Marker:
        """Outline the training goal box: where the policy learned to reach (a line list)."""
        goal = self.controller.spec.goal
        m = Marker(ns="goal_box", id=3, type=Marker.LINE_LIST, action=Marker.ADD)
        m.header.frame_id, m.header.stamp = self.world_frame, stamp
        m.pose.orientation.w = 1.0
        size = max(float(h - lo) for lo, h in zip(goal.low, goal.high, strict=True))
        m.scale.x = max(size * 0.005, 0.001)  # line width
        m.color.r, m.color.g, m.color.b, m.color.a = 1.0, 0.8, 0.1, 0.8
        for a, b in box_edges(goal.low, goal.high, self.axes):
            m.points += [Point(x=float(a[0]), y=float(a[1]), z=float(a[2])),
                         Point(x=float(b[0]), y=float(b[1]), z=float(b[2]))]
        return m

    def _sphere(self, marker_id: int, ns: str, stamp: Any, position: np.ndarray | None,
                diameter: float, rgba: tuple[float, float, float, float]) -> Marker:
        m = Marker(ns=ns, id=marker_id, type=Marker.SPHERE)
        m.header.frame_id, m.header.stamp = self.world_frame, stamp
        if position is None:
            m.action = Marker.DELETE
            return m
        m.action = Marker.ADD
        m.pose.position.x, m.pose.position.y, m.pose.position.z = (float(v) for v in position)
        m.pose.orientation.w = 1.0
        m.scale.x = m.scale.y = m.scale.z = diameter
        m.color.r, m.color.g, m.color.b, m.color.a = rgba
        return m


def _text(value: Any) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.6g}"
    return str(value)


def main(args: list[str] | None = None) -> int:
    """Entry point of `ros2 run crl_runtime goal_reach`."""
    return run_node(GoalReach, args)


if __name__ == "__main__":
    sys.exit(main())
