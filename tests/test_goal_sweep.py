"""bench/goal_sweep.py: goals round a planar arm from set start poses, through the controller and
the sim robot in lockstep; its flags checked before anything loads."""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import goal_sweep  # bench/goal_sweep.py


@pytest.mark.parametrize(("flags", "said"), [
    (["--step", "0"], "--step"),
    (["--step", "270"], "--step"),
    (["--radius", "-0.1"], "--radius"),
    (["--radius", "nan"], "--radius"),
    (["--radius", "inf"], "--radius"),
    (["--starts", "0.9;-0.3"], "--starts"),
])
def test_bad_flags_are_refused_before_any_policy_loads(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str], said: str) -> None:
    out = tmp_path / "sweep.json"
    with pytest.raises(SystemExit) as e:
        goal_sweep.main([str(tmp_path / "absent.onnx"), *flags, "--out", str(out)])
    assert e.value.code == 2 and said in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.skipif(not os.environ.get("CRL_DEMO_POLICY"),
                    reason="CRL_DEMO_POLICY unset (make test trains the quickstart policy)")
def test_a_sweep_scores_every_goal_from_every_start(tmp_path: Path) -> None:
    """Four goals from two starts: each scored by its final distance, the misses exactly those
    past the success radius; a start pose of the wrong size is refused."""
    policy = os.environ["CRL_DEMO_POLICY"]
    out = tmp_path / "sweep.json"
    assert goal_sweep.main([policy, "--step", "90", "--starts", "2.5,0.5", "0,0",
                            "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["benchmark"] == "goal_sweep" and {"date", "device"} <= set(result)
    (run,) = result["runs"]
    assert run["angles_deg"] == [-180.0, -90.0, 0.0, 90.0]
    assert [s["start"] for s in run["starts"]] == [[2.5, 0.5], [0.0, 0.0]]
    for start in run["starts"]:
        finals = start["final_distances"]
        assert len(finals) == 4 and all(math.isfinite(f) and f >= 0 for f in finals)
        assert start["missed_angles_deg"] == [
            a for a, f in zip(run["angles_deg"], finals, strict=True)
            if f > run["success_radius"]]
    with pytest.raises(SystemExit, match="2 joint angles"):
        goal_sweep.main([policy, "--starts", "0.1,0.2,0.3", "--out", str(tmp_path / "x.json")])
