"""bench/gpu.sh, the GPU run's one script: its step runner and its records, with stand-in
commands (a second or two; no jax). `make test` runs the script itself at toy sizes
(`make test-gpu-smoke`: `bash bench/gpu.sh --smoke`), which fails when a step crashes.
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "bench" / "gpu.sh"
PY = shlex.quote(sys.executable)


def bash(script: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", "-c", script], cwd=cwd, capture_output=True, text=True,
                          timeout=120)


def test_help_and_a_bad_argument() -> None:
    r = bash(f"bash {SCRIPT} --help")
    assert r.returncode == 0, r.stderr
    assert "--smoke" in r.stdout and "summary.json" in r.stdout
    r = bash(f"bash {SCRIPT} --frobnicate")
    assert r.returncode == 2
    assert "unknown argument: --frobnicate" in r.stderr
    r = bash(f"bash {SCRIPT} --budget soon")
    assert r.returncode == 2 and "--budget" in r.stderr


def test_each_status_is_recorded_and_the_run_goes_on(tmp_path: Path) -> None:
    out = tmp_path / "out"
    steps = {
        # name: (command, the status it must get)
        "writes": (f"{PY} -c 'import json, sys; json.dump({{\"x\": 1}}, open(sys.argv[1], \"w\"))'"
                   f" {out}/writes.json", "ok"),
        "writes_nothing": ("true", "failed"),
        "refuses": (f"{PY} -c 'import sys; sys.exit(\"thing: TensorRT is not installed\")' "
                    "; exit 2", "unavailable"),
        "bad_flag": ("echo 'usage: x [-h]' >&2; echo 'x: error: unrecognized arguments: --y' >&2;"
                     " exit 2", "failed"),
        "crashes": (f"echo '{{\"depth\": 64, \"env_steps_per_s\": 10.0}}'; "
                    f"{PY} -c 'raise ValueError(\"boom\")'", "crashed"),
        "hangs": ("sleep 30", "timeout"),
    }
    script = [f"source {SCRIPT}", f"OUT_DIR={out}", "MODE=smoke", "BUDGET_S=100", "init_run"]
    for name, (command, _) in steps.items():
        limit = 2 if name == "hangs" else 60
        script.append(f"run_step {name} {limit} {out}/{name}.json -- "
                      f"bash -c {shlex.quote(command)}")
    script += ["STOP_REASON='setup failed: no jax'",
               f"run_step after_setup_failed 60 {out}/after_setup_failed.json -- true",
               "finish"]
    r = bash("\n".join(script))
    assert r.returncode == 1, r.stdout + r.stderr  # a step failed, crashed or timed out
    assert "4 step(s) failed, crashed or timed out" in r.stderr

    summary = json.loads((out / "summary.json").read_text())
    got = {s["name"]: s for s in summary["steps"]}
    want = {name: status for name, (_, status) in steps.items()} | {"after_setup_failed": "skipped"}
    assert {name: s["status"] for name, s in got.items()} == want
    assert summary["ok"] is False and summary["mode"] == "smoke"
    assert summary["counts"] == {"ok": 1, "failed": 2, "unavailable": 1, "crashed": 1,
                                 "timeout": 1, "skipped": 1}
    assert got["writes"]["output"] == "writes.json"
    assert json.loads((out / "writes.json").read_text()) == {"x": 1}  # the step's own JSON
    assert got["refuses"]["reason"] == "thing: TensorRT is not installed"
    assert got["crashes"]["reason"] == "ValueError: boom"
    assert got["hangs"]["reason"] == "stopped at its time limit (2 s)"
    assert got["writes_nothing"]["reason"] == "exited 0 but wrote no JSON at writes_nothing.json"
    assert got["after_setup_failed"]["reason"] == "setup failed: no jax"
    for name in ("writes", "crashes"):
        assert got[name]["logs"] == [f"logs/{name}.stdout", f"logs/{name}.stderr"]

    # A step that stopped leaves a record in place of its JSON: the reason, the stderr's end,
    # and the JSON rows it printed before it stopped.
    crashed = json.loads((out / "crashes.json").read_text())
    assert crashed["status"] == "crashed" and crashed["reason"] == "ValueError: boom"
    assert crashed["stdout_json"] == [{"depth": 64, "env_steps_per_s": 10.0}]
    assert crashed["stderr_tail"][0] == "Traceback (most recent call last):"
    skipped = json.loads((out / "after_setup_failed.json").read_text())
    assert skipped["status"] == "skipped"

    # Some steps again into the same folder (--only): the summary keeps the others' entries.
    r = bash("\n".join([f"source {SCRIPT}", f"OUT_DIR={out}", "MODE=smoke", "init_run",
                        f"run_step crashes 60 {out}/crashes.json -- bash -c "
                        f"{shlex.quote(steps['writes'][0].replace('writes.json', 'crashes.json'))}",
                        "finish"]))
    assert r.returncode == 0, r.stdout + r.stderr
    again = {s["name"]: s for s in json.loads((out / "summary.json").read_text())["steps"]}
    assert list(again) == [*(name for name in want if name != "crashes"), "crashes"]
    assert again["crashes"]["status"] == "ok" and "earlier_run" not in again["crashes"]
    assert again["hangs"]["status"] == "timeout" and again["hangs"]["earlier_run"] is True


def test_sweep_plan_uses_the_measured_rate(tmp_path: Path) -> None:
    """The depth sweep's env steps come from train_throughput_d64's depth-64 fp32 rate and
    the time left; too little time skips it."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "train_throughput_d64.json").write_text(json.dumps({"results": [
        {"depth": 64, "dtype": "bf16", "env_steps_per_s": 1.0, "collect_env_steps_per_s": 1.0},
        {"depth": 64, "dtype": "fp32", "env_steps_per_s": 30000.0,
         "collect_env_steps_per_s": 512000.0}]}))
    base = f"source {SCRIPT}; OUT_DIR={out}; init_run >/dev/null; book sweep-plan"
    # 300 s left, 2 x 75 s overhead, 2 x 1 s prefill: 148 s of training; 30k/s / 1.5 = 2.96M.
    r = bash(f"{base} 300 75 20 5000 31744 512000")
    steps, every, why = r.stdout.split(maxsplit=2)
    assert int(steps) % 31744 == 0 and 512000 + 2_900_000 < int(steps) <= 512000 + 2_960_000
    assert int(every) % 31744 == 0 and int(every) <= int(steps) // 4
    assert "train_throughput_d64.json" in why
    r = bash(f"{base} 160 75 20 5000 31744 512000")
    assert r.stdout.startswith("0 0 160 s left"), r.stdout


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed")
def test_shellcheck_clean() -> None:
    r = subprocess.run(["shellcheck", str(SCRIPT)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout


def gpu_commands(tmp_path: Path, budget: int = 540) -> dict[str, list[str]]:
    """Each step's command in the GPU mode, by step name, as run_benchmarks builds them (a
    stand-in run_step records them instead of running them, and answers `unavailable`, so the
    jax-only simulation step comes too)."""
    out, capture = tmp_path / "out", tmp_path / "commands.jsonl"
    out.mkdir()
    (out / "train_throughput_d64.json").write_text(json.dumps({"results": [
        {"depth": 64, "dtype": "fp32", "env_steps_per_s": 20000.0,
         "collect_env_steps_per_s": 200000.0}]}))
    script = f"""
source {SCRIPT}
OUT_DIR={out}; MODE=gpu; BUDGET_S={budget}; init_run >/dev/null; PY={PY}
mkdir -p "$WORK/policy"; touch "$WORK/policy/actor_fp32.onnx" "$WORK/policy/actor_fp16.onnx"
run_step() {{
  local name=$1; shift 4
  {PY} -c 'import json, sys; print(json.dumps(sys.argv[1:]))' "$name" "$@" >>{capture}
  STEP_STATUS=unavailable
}}
run_benchmarks
"""
    r = bash(script)
    assert r.returncode == 0, r.stdout + r.stderr
    lines = [json.loads(line) for line in capture.read_text().splitlines()]
    return {line[0]: line[1:] for line in lines}


def script_args(command: list[str], script: str) -> list[str]:
    """The arguments after `bench/<script>` in a step's command."""
    i = next(i for i, a in enumerate(command) if a.endswith(f"bench/{script}"))
    return command[i + 1:]


def test_the_gpu_steps_flags_parse(tmp_path: Path) -> None:
    """The GPU mode's flags, which the smoke run does not pass, parse with each script's own
    command line: a typo must not wait for a lent GPU to show."""
    pytest.importorskip("jax", reason="the bench scripts import jax (train extra)")
    import tyro

    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import depth_sweep
        import policy_latency_gpu
        import sim_throughput
        import train_throughput
    finally:
        sys.path.remove(str(ROOT / "bench"))
    commands = gpu_commands(tmp_path)
    assert list(commands) == ["train_throughput_d64", "train_throughput_d256", "sim_throughput",
                              "sim_throughput_jax", "export_onnx", "tensorrt_fp32",
                              "tensorrt_fp16", "policy_latency_gpu", "depth_sweep"]
    for depth in (64, 256):
        args = train_throughput.parse_args(
            script_args(commands[f"train_throughput_d{depth}"], "train_throughput.py"))
        assert args.depths == [depth] and args.dtypes == ["fp32", "bf16"]
        assert args.task == "ant" and args.num_envs == 512  # the paper's sizes
    both = tyro.cli(sim_throughput.Config,
                    args=script_args(commands["sim_throughput"], "sim_throughput.py"))
    alone = tyro.cli(sim_throughput.Config,
                     args=script_args(commands["sim_throughput_jax"], "sim_throughput.py"))
    assert both.physics == ("jax", "warp") and alone.physics == ("jax",)
    assert both.tasks == alone.tasks and both.num_envs == alone.num_envs and not both.quick
    latency = tyro.cli(policy_latency_gpu.Config, args=script_args(
        commands["policy_latency_gpu"], "policy_latency_gpu.py"))
    assert latency.batches == (1, 64, 1024) and not latency.quick
    assert (latency.depth, latency.width) == (64, 256)
    assert commands["export_onnx"][-4:-2] == ["64", "256"]  # the same actor as the latency's
    from crl.export.cli import TensorRTArgs

    # The engine's step runs crl-export through bash (then copies the sidecar): here with a
    # stand-in crl-export that records its arguments and writes a sidecar.
    stub = tmp_path / "crl-export"
    stub.write_text(f"#!{sys.executable}\nimport json, sys\n"
                    "out = sys.argv[sys.argv.index('--out') + 1]\n"
                    "json.dump(sys.argv[1:], open(out + '.json', 'w'))\n")
    stub.chmod(0o755)
    for precision in ("fp32", "fp16"):
        trt = commands[f"tensorrt_{precision}"]
        assert trt[0] == "bash" and trt[-6].endswith("/crl-export")
        trt[-6] = str(stub)
        trt[-4] = str(tmp_path / f"{precision}.engine")
        trt[-1] = str(tmp_path / f"tensorrt_{precision}.json")
        subprocess.run(trt, check=True)
        argv = json.loads(Path(trt[-1]).read_text())
        assert argv[0] == "tensorrt"
        args = tyro.cli(TensorRTArgs, args=argv[1:])
        assert args.onnx.name == f"actor_{precision}.onnx"
        assert (args.precision, args.max_batch) == (precision, 1024)
    sweep = tyro.cli(depth_sweep.DepthSweepConfig,
                     args=script_args(commands["depth_sweep"], "depth_sweep.py"))
    assert (sweep.task, sweep.depths, sweep.preset, sweep.seeds) == ("paper_ant", "4,64",
                                                                       "paper", 1)
    assert sweep.out == tmp_path / "out" / "depth_sweep"
    # 20k env steps/s at depth 64 and a few minutes left: millions of steps, evaluated 4 times.
    assert 1_000_000 < sweep.steps < 10_000_000
    every = int(sweep.train_args.split()[1])
    assert sweep.train_args == f"--eval-every {every} --keep-checkpoints 1"
    assert sweep.steps // 5 < every <= sweep.steps // 4


def test_too_little_time_skips_the_sweep(tmp_path: Path) -> None:
    commands = gpu_commands(tmp_path, budget=100)
    assert "depth_sweep" not in commands
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    sweep = next(s for s in summary["steps"] if s["name"] == "depth_sweep")
    assert sweep["status"] == "skipped" and sweep["reason"].startswith("not enough time left")
    assert sweep["output"] == "depth_sweep/sweep.json"
