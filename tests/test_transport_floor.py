"""bench/transport_floor.py: a short run of both variants writes the JSON docs/ renders."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench" / "transport_floor.py"


@pytest.mark.realtime
def test_both_variants_time_every_answer_over_loopback(tmp_path: Path) -> None:
    out = tmp_path / "floor.json"
    proc = subprocess.run(
        [sys.executable, str(BENCH), "--out", str(out), "--hz", "100", "--seconds", "1",
         "--rounds", "1"],
        capture_output=True, text=True, timeout=120, check=False, cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = json.loads(out.read_text())
    assert set(data) >= {"benchmark", "date", "device", "versions", "config", "variants"}
    assert set(data["variants"]["zmq"]) == {"round_trip"}
    assert set(data["variants"]["crl"]) == {"round_trip", "observation_leg", "action_leg"}
    for legs in data["variants"].values():
        for leg in legs.values():
            # 100 samples, the first 20 not counted; only the last one's answer may come after
            # the robot has stopped listening
            assert 79 <= leg["samples"] <= 80
            assert 0 < leg["p50"] <= leg["p90"] <= leg["p99"] <= leg["max"]
    crl = data["variants"]["crl"]
    assert crl["observation_leg"]["p50"] < crl["round_trip"]["p50"]


def test_a_run_too_short_to_measure_is_refused_in_one_line(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(BENCH), "--out", str(tmp_path / "x.json"), "--seconds", "0.1"],
        capture_output=True, text=True, timeout=60, check=False, cwd=ROOT,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "--seconds" in proc.stderr
