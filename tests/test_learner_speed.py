"""bench/learner_speed.py: its smoke mode runs as a script and writes the JSON docs/ renders."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from crl.train.networks import default_block_scan

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench" / "learner_speed.py"


@pytest.mark.slow
def test_quick_mode_compares_the_shipped_loop_with_the_unrolled_network(tmp_path: Path) -> None:
    out = tmp_path / "results" / "learner.json"
    proc = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--out", str(out)],
        capture_output=True, text=True, timeout=600, check=False, cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = json.loads(out.read_text())
    assert set(data) >= {"benchmark", "date", "machine", "versions", "backend", "shipped",
                         "config", "load_at_start", "load_at_end", "results"}
    assert set(data["machine"]) >= {"platform", "cpu_model", "cpu_cores"}
    assert set(data["versions"]) >= {"python", "jax", "jaxlib", "flax"}
    assert data["shipped"] == dataclasses.asdict(default_block_scan(data["backend"]))
    assert [r["depth"] for r in data["results"]] == [4, 8]
    for row in data["results"]:
        assert len(row["load_before"]) == 3 and len(row["load_after"]) == 3
        assert row["rounds"] >= 3
        shipped, unrolled = row["variants"]["shipped"], row["variants"]["unrolled"]
        assert unrolled["block_scan"] == {"unroll": 0, "remat": "none"}
        # both timed in the same rounds, one call each a round
        assert shipped["calls"] == unrolled["calls"] == row["rounds"]
        for v in (shipped, unrolled):
            assert v["compile_s"] > 0 and v["update_ms"] > 0 and v["update_cpu_ms"] >= 0
        assert shipped["paired_time_ratio_to_unrolled"] > 0
        ratio = shipped["update_ms"] / unrolled["update_ms"]
        assert shipped["time_ratio_to_unrolled"] == pytest.approx(ratio, rel=0.02)
        inference = row["inference"]["variants"]
        assert inference["shipped"]["act_ms"] > 0 and inference["unrolled"]["act_ms"] > 0
        # the shipped loop also under the env's options (how one program compiled the learner)
        env_options = row["variants"]["shipped_env_options"]
        assert env_options["block_scan"] == shipped["block_scan"]
        assert env_options["calls"] == row["rounds"] and env_options["update_ms"] > 0
    # in situ: the trainer's two programs against one, each timed after it trained once
    it = data["iteration"]
    assert it["depth"] == 4 and it["num_envs"] == 4 and it["rounds"] == 1
    assert it["env_steps_per_iteration"] == 4 * it["unroll_length"]
    for name in ("two_programs", "one_program"):
        v = it["variants"][name]
        assert v["compile_s"] > 0 and len(v["iteration_s_all"]) == 1
        assert v["env_steps_per_s"] == pytest.approx(it["env_steps_per_iteration"]
                                                     / v["iteration_s"], rel=0.2)
    assert it["variants"]["two_programs"]["paired_time_ratio_to_one_program"] > 0
    assert out.with_suffix(".png").stat().st_size > 10_000


def test_a_bad_candidate_is_one_line_and_exit_2(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--candidates", "2:everything",
         "--out", str(tmp_path / "x.json")],
        capture_output=True, text=True, timeout=300, check=False, cwd=ROOT,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip() == ("learner_speed: candidates: BlockScan.remat: 'everything' is "
                                   "not in ['none', 'dots']")
    assert not (tmp_path / "x.json").exists()
