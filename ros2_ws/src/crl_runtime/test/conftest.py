"""
Fixtures for crl_runtime's tests: the network rule, the installed nodes, test policies.

DDS discovery multicasts on every interface, so any test that starts rclpy runs only inside a
private network namespace with nothing but loopback (ros2_ws/test.sh makes one with
`unshare -n`), with ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST and a ROS_DOMAIN_ID of its own.
Where that is not the case those tests skip, saying why; they never use the host's network.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import pytest

from crl.testbed.closed_loop import stop_process

PACKAGE = Path(__file__).resolve().parents[1]
REPO = PACKAGE.parents[2]
_domains = itertools.count(11)


def private_network() -> str:
    """Say why rclpy must not start here ("" when it may)."""
    # Asked of the kernel for this process's namespace (/sys/class/net may show the host's).
    nets = sorted(name for _, name in socket.if_nameindex())
    if nets != ["lo"]:
        return (f"not in a private network namespace (interfaces: {', '.join(nets) or 'none'}); "
                "run ros2_ws/test.sh, which makes one with `unshare -n`")
    if os.environ.get("ROS_AUTOMATIC_DISCOVERY_RANGE") != "LOCALHOST":
        return "ROS_AUTOMATIC_DISCOVERY_RANGE is not LOCALHOST; run ros2_ws/test.sh"
    return ""


@pytest.fixture
def ros_env(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Give this test a ROS domain of its own inside the private namespace, or skip."""
    why = private_network()
    if why:
        pytest.skip(why)
    domain = str(next(_domains))
    monkeypatch.setenv("ROS_DOMAIN_ID", domain)
    return {**os.environ, "ROS_DOMAIN_ID": domain, "PYTHONUNBUFFERED": "1"}


def installed_executable(name: str) -> Path | None:
    """Find crl_runtime's installed executable through AMENT_PREFIX_PATH."""
    for prefix in filter(None, os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep)):
        exe = Path(prefix) / "lib" / "crl_runtime" / name
        if exe.is_file():
            return exe
    return None


@pytest.fixture(scope="session")
def executables() -> dict[str, Path]:
    """Locate the colcon-installed nodes, or skip when the package is not built and sourced."""
    found = {n: installed_executable(n) for n in ("goal_reach", "sim_bridge")}
    missing = [n for n, p in found.items() if p is None]
    if missing:
        pytest.skip(f"crl_runtime's {', '.join(missing)} not installed: run ros2_ws/test.sh "
                    "(colcon build, then source install/setup.bash)")
    return {n: p for n, p in found.items() if p is not None}


@pytest.fixture(scope="session")
def share() -> Path:
    """Find the installed package's share directory (falls back to the source tree)."""
    try:
        from ament_index_python.packages import get_package_share_directory

        return Path(get_package_share_directory("crl_runtime"))
    except (ImportError, LookupError, ValueError):
        return PACKAGE


def reacher_spec() -> Any:
    """Build the reacher's policy spec by hand (as the env writes it), so no jax is needed."""
    from crl.core.spec import ActionSpec, Field, GoalSpec, NetworkSpec, PolicySpec, Provenance
    from crl.runtime import robot_config

    xml = robot_config.ASSETS / "reacher.xml"
    joints = ("shoulder", "elbow")
    return PolicySpec(
        task="reacher",
        observation=(Field("joint_pos", 2, "", "", joints), Field("joint_vel", 2, "", "", joints),
                     Field("site_pos", 3, "", "world"), Field("last_action", 2, "", "", joints)),
        goal=GoalSpec((Field("fingertip_xy", 2, "", "world"),), "world", (-0.2, -0.2),
                      (0.2, 0.2)),
        action=ActionSpec(2, joints, "position", (3.14, 2.6), (0.0, 0.0), (-3.14, -2.6),
                          (3.14, 2.6)),
        control_hz=25.0,
        success_radius=0.02,
        provenance=Provenance("reacher", hashlib.sha256(xml.read_bytes()).hexdigest()),
        network=NetworkSpec(4, 32, 16),
    )


def effort_spec() -> Any:
    """Build the reacher's spec with torque actions (N·m), as an effort-controlled arm's."""
    from crl.core.spec import ActionSpec

    spec = reacher_spec()
    return spec.replace(action=ActionSpec(2, spec.action.joints, "effort", (1.0, 1.0),
                                          (0.0, 0.0), (-1.0, -1.0), (1.0, 1.0)))


ANT_JOINTS = ("hip_1", "ankle_1", "hip_2", "ankle_2", "hip_3", "ankle_3", "hip_4", "ankle_4")


def ant_spec() -> Any:
    """Build the ant's policy spec by hand (a floating base: its pose and twist from odometry)."""
    from crl.core.spec import ActionSpec, Field, GoalSpec, NetworkSpec, PolicySpec, Provenance
    from crl.runtime import robot_config

    xml = robot_config.ASSETS / "ant.xml"
    j = ANT_JOINTS
    return PolicySpec(
        task="ant",
        observation=(Field("base_pos", 3, "", "world"), Field("base_quat", 4, "", "world"),
                     Field("joint_pos", 8, "", "", j), Field("base_lin_vel", 3, "", "base"),
                     Field("base_ang_vel", 3, "", "base"), Field("joint_vel", 8, "", "", j)),
        goal=GoalSpec((Field("torso_xy", 2, "", "world"),), "world", (-10.0, -10.0),
                      (10.0, 10.0)),
        action=ActionSpec(8, j, "position", (0.5, 0.4) * 4, (0.0,) * 8, (-0.5, -0.4) * 4,
                          (0.5, 0.4) * 4),
        control_hz=20.0,
        success_radius=0.5,
        provenance=Provenance("ant", hashlib.sha256(xml.read_bytes()).hexdigest()),
        network=NetworkSpec(4, 32, 16),
    )


def export_random(spec: Any, path: Path, critic: bool = False) -> Path:
    """Export a random-weights policy for `spec` (no jax)."""
    from crl.export.onnx_export import export_actor, random_params

    export_actor(random_params(spec, seed=0, critic=critic), spec, path, critic=critic)
    return path


@pytest.fixture(scope="session")
def effort_policy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Export a random-weights reacher policy commanding torques."""
    return export_random(effort_spec(), tmp_path_factory.mktemp("policy") / "effort.onnx")


@pytest.fixture(scope="session")
def ant_policy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Export a random-weights ant policy (reads odometry)."""
    return export_random(ant_spec(), tmp_path_factory.mktemp("policy") / "ant_random.onnx")


@pytest.fixture(scope="session")
def random_policy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Export a random-weights reacher policy with the critic outputs (reachability marker)."""
    from crl.export.onnx_export import export_actor, random_params

    spec = reacher_spec()
    path = tmp_path_factory.mktemp("policy") / "reacher_random.onnx"
    export_actor(random_params(spec, seed=0, critic=True), spec, path, critic=True)
    return path


@pytest.fixture(scope="session")
def demo_policy() -> Path:
    """Find the trained reacher policy: $CRL_ROS_POLICY, else `make demo`'s demo/reacher.onnx."""
    env = os.environ.get("CRL_ROS_POLICY", "")
    path = Path(env) if env else REPO / "demo" / "reacher.onnx"
    if not path.is_file():
        pytest.skip(f"no trained reacher policy at {path}: set CRL_ROS_POLICY=/path/reacher.onnx "
                    "(`make demo` writes demo/reacher.onnx)")
    return path


@dataclass
class Proc:
    """A node started from the install, its output in a log file."""

    name: str
    popen: subprocess.Popen[bytes]
    log: IO[bytes]
    path: Path

    def text(self) -> str:
        self.log.flush()
        return self.path.read_text(errors="replace")

    def stop(self, timeout: float = 10.0) -> int:
        return stop_process(self.popen, timeout)


@pytest.fixture
def start_node(tmp_path: Path, ros_env: dict[str, str]) -> Iterator[Callable[..., Proc]]:
    """Start an installed node with parameters; every one started is stopped afterwards."""
    procs: list[Proc] = []

    def start(exe: Path, params: dict[str, Any], name: str | None = None) -> Proc:
        name = name or exe.name
        args = [str(exe), "--ros-args"]
        for k, v in params.items():
            value = str(v).lower() if isinstance(v, bool) else str(v)
            args += ["-p", f"{k}:={value}"]
        path = tmp_path / f"{name}.log"
        log = open(path, "w+b")  # noqa: SIM115 (closed at teardown)
        popen = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT,
                                 stdin=subprocess.DEVNULL, env=ros_env)
        proc = Proc(name, popen, log, path)
        procs.append(proc)
        return proc

    yield start
    for p in procs:
        p.stop()
        p.log.close()


@dataclass
class Recorder:
    """Messages a topic delivered, with their arrival times (monotonic)."""

    messages: list[tuple[float, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, msg: Any) -> None:
        with self.lock:
            self.messages.append((time.monotonic(), msg))

    def since(self, t: float) -> list[Any]:
        with self.lock:
            return [m for s, m in self.messages if s >= t]

    def last(self) -> Any:
        with self.lock:
            return self.messages[-1][1] if self.messages else None


class Peer:
    """An rclpy node in this test process, spun in a background thread."""

    def __init__(self, domain: int, name: str = "crl_test"):
        import rclpy
        from rclpy.context import Context
        from rclpy.executors import SingleThreadedExecutor

        self.context = Context()
        rclpy.init(context=self.context, domain_id=domain)
        self.node = rclpy.create_node(name, context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.thread = threading.Thread(target=self._spin, daemon=True)
        self.thread.start()

    def _spin(self) -> None:
        while self.context.ok():
            try:
                self.executor.spin_once(timeout_sec=0.05)
            except Exception:  # the context went down under the executor: done
                return

    def record(self, msg_type: Any, topic: str, qos: Any = 10) -> Recorder:
        rec = Recorder()
        self.node.create_subscription(msg_type, topic, rec, qos)
        return rec

    def close(self) -> None:
        self.context.shutdown()
        self.thread.join(timeout=2.0)
        self.node.destroy_node()


@pytest.fixture
def peer(ros_env: dict[str, str]) -> Iterator[Peer]:
    """Give the test an rclpy node on its own domain."""
    node = Peer(int(ros_env["ROS_DOMAIN_ID"]))
    yield node
    node.close()


def wait_for(predicate: Callable[[], Any], timeout: float, what: str,
             proc: Proc | None = None) -> Any:
    """Poll until `predicate()` is truthy; fail naming `what` (and the node's last output)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.popen.poll() is not None:
            pytest.fail(f"{proc.name} exited ({proc.popen.returncode}) while waiting for {what}:"
                        f"\n{proc.text()[-3000:]}")
        time.sleep(0.02)
    tail = f"\n{proc.name} said:\n{proc.text()[-3000:]}" if proc is not None else ""
    pytest.fail(f"timed out after {timeout:g} s waiting for {what}{tail}")


def diag_values(msg: Any) -> dict[str, str]:
    """Flatten the goal_reach status of a DiagnosticArray into a dict."""
    for status in msg.status:
        if status.name == "crl_runtime: goal_reach":
            return {kv.key: kv.value for kv in status.values}
    return {}
