"""bench/closed_loop_ros.py: its inputs are checked before any ROS run starts (the runs
themselves are ros2_ws/test.sh's closed-loop test, which CI runs with the reacher's policy)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench" / "closed_loop_ros.py"


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(BENCH), *args], capture_output=True, text=True,
                          timeout=60, check=False, cwd=ROOT)


def test_another_robots_policy_is_refused_before_any_run(
        toy_policy: tuple[object, object, Path], tmp_path: Path) -> None:
    out = tmp_path / "ros.json"
    proc = run("--robot", "arm_reach", str(toy_policy[2]), "--out", str(out))
    assert proc.returncode == 2, proc.stderr
    assert "a policy for 'toy', not 'arm_reach'" in proc.stderr
    assert not out.exists()


def test_a_missing_policy_is_refused_before_any_run(tmp_path: Path) -> None:
    proc = run("--robot", "reacher", str(tmp_path / "none.onnx"), "--out",
               str(tmp_path / "ros.json"))
    assert proc.returncode == 2, proc.stderr
    assert "none.onnx: no such file" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "ros.json").exists()
