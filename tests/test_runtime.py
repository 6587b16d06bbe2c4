"""Runtime: backends behind one interface, input checks, bad policy files, the latency bench."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from crl.core.policy_file import SPEC_KEY, stamp_seal
from crl.core.spec import PolicySpec
from crl.runtime.bench import (
    BenchConfig,
    bench_policy,
    cpu_times,
    memory_bandwidth,
    run_bench,
    steal_percent,
    summarize,
    time_calls,
    versions,
)
from crl.runtime.cli import main as run_main
from crl.runtime.onnx_file import read_spec
from crl.runtime.policy import PolicyError, load_policy

# The robot's install (`make test-robot`: Python 3.10, no train extra) has neither.
NEEDS_JAX = "needs jax, the train extra (not in the robot's install)"
HAS_JAX = importlib.util.find_spec("jax") is not None
HAS_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None


OBS, GOAL = 9, 2  # the sizes of conftest's toy spec, which the bad inputs below are built for


def test_ort_and_jax_backends_agree(toy_policy: tuple[PolicySpec, dict, Path]) -> None:
    pytest.importorskip("jax", reason=NEEDS_JAX)
    from crl.testbed.jax_backend import JaxPolicy

    spec, params, path = toy_policy
    ort_policy, jax_policy = load_policy(path, "ort"), JaxPolicy(params, spec)
    assert ort_policy.spec == spec == jax_policy.spec
    assert ort_policy.outputs == jax_policy.outputs == ("action", "phi", "psi", "distance")
    rng = np.random.default_rng(0)
    obs, goal = rng.standard_normal((5, spec.obs_dim)), rng.uniform(-1, 1, (5, spec.goal_dim))
    a = ort_policy.act(obs, goal)  # float64 in: converted
    assert a.shape == (5, spec.act_dim) and a.dtype == np.float32
    np.testing.assert_allclose(a, jax_policy.act(obs, goal), atol=1e-5)
    single = ort_policy.act(obs[0], goal[0])
    assert single.shape == (spec.act_dim,)
    np.testing.assert_allclose(single, a[0], atol=1e-6)
    ort_out, jax_out = ort_policy.run(obs, goal), jax_policy.run(obs, goal)
    for k in ort_out:
        np.testing.assert_allclose(ort_out[k], jax_out[k], rtol=1e-5, atol=1e-5)
    assert ort_policy.run(obs[0], goal[0])["distance"].shape == ()
    assert ort_policy.weight_bytes > 0 and ort_policy.precision == "fp32"


@pytest.mark.parametrize(
    ("obs", "goal", "match"),
    [
        (np.zeros(OBS - 1), np.zeros(GOAL), f"observation: got {OBS - 1} values.*expects {OBS}"),
        (np.zeros(OBS), np.zeros(GOAL + 1), f"goal: got {GOAL + 1} values.*expects {GOAL}"),
        (np.zeros((2, OBS)), np.zeros((3, GOAL)), "batch 2 != goal batch 3"),
        (np.zeros((1, 1, OBS)), np.zeros((1, 1, GOAL)), "pass one"),
        (np.zeros((2, OBS)), np.zeros(GOAL), "pass one"),
        (np.array(["a"] * OBS), np.zeros(GOAL), "dtype <U1"),
        (np.zeros(OBS, complex), np.zeros(GOAL), "dtype complex128"),
        # joint_pos is the first 5 values, joint_vel the next 4
        (np.r_[np.zeros(6), np.nan, 0, 0], np.zeros(GOAL), "non-finite.*joint_vel"),
        (np.zeros(OBS), np.array([np.inf, 0]), "goal: non-finite.*xy"),
        (np.full(OBS, 1e300), np.zeros(GOAL), "observation: non-finite"),
    ],
)
def test_bad_inputs(toy_policy: tuple[PolicySpec, dict, Path], obs, goal, match: str) -> None:
    assert (toy_policy[0].obs_dim, toy_policy[0].goal_dim) == (OBS, GOAL)
    policy = load_policy(toy_policy[2])
    with pytest.raises(PolicyError, match=match) as e:
        policy.act(obs, goal)
    assert "\n" not in str(e.value)


def _reseal_free_copy(src: Path, dst: Path, edit) -> Path:
    model = onnx.load(src)
    edit(model)
    onnx.save(model, dst)
    return dst


def _resealed_copy(src: Path, dst: Path, edit) -> Path:
    """An edit sealed anew, as a faulty or newer exporter would write it: what the checks behind
    the seal see."""
    model = onnx.load(src)
    edit(model)
    stamp_seal(model)
    onnx.save(model, dst)
    return dst


def _set_format(model: onnx.ModelProto) -> None:
    meta = {p.key: p.value for p in model.metadata_props}
    spec = json.loads(meta[SPEC_KEY])
    spec["format"] = "crl-policy/99"
    helper.set_model_props(model, {**meta, SPEC_KEY: json.dumps(spec)})


def _tamper_weight(model: onnx.ModelProto) -> None:
    t = model.graph.initializer[3]
    t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t) * 1.01, t.name))


def _widen_goal(model: onnx.ModelProto) -> None:
    model.graph.input[1].type.tensor_type.shape.dim[-1].dim_value += 1


def _external_weight(model: onnx.ModelProto) -> None:
    """A weight moved out to a file beside the policy: ONNX Runtime would read it from there."""
    t = model.graph.initializer[3]
    size = numpy_helper.to_array(t).nbytes
    t.ClearField("raw_data")
    t.ClearField("float_data")
    t.data_location = onnx.TensorProto.EXTERNAL
    for key, value in (("location", "weights.bin"), ("offset", "0"), ("length", str(size))):
        entry = t.external_data.add()
        entry.key, entry.value = key, value


def _loop_op(model: onnx.ModelProto) -> None:
    """An operator the exporter never writes (here control flow, whose trips an input sets)."""
    next(n for n in model.graph.node if n.op_type == "Tanh").op_type = "Loop"


def _custom_op(model: onnx.ModelProto) -> None:
    node = next(n for n in model.graph.node if n.op_type == "Sigmoid")
    node.domain, node.op_type = "com.example", "X" * 10_000


def _fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


def _plain_onnx(path: Path) -> Path:
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda src, d: d / "missing.onnx", "no such file; export a policy"),
        (lambda src, d: d, "cannot read"),
        (lambda src, d: (d / "notes.onnx").write_text("not a model") and d / "notes.onnx",
         "not an ONNX model"),
        (lambda src, d: (d / "zeros.onnx").write_bytes(bytes(64)) and d / "zeros.onnx",
         "not an ONNX model"),
        (lambda src, d: _plain_onnx(d / "plain.onnx"), "without a crl policy spec"),
        (lambda src, d: _resealed_copy(src, d / "fmt.onnx", _set_format),
         "spec.format: 'crl-policy/99' is not a format"),
        (lambda src, d: _reseal_free_copy(src, d / "tampered.onnx", _tamper_weight),
         "weights sha256 mismatch.*re-export"),
        (lambda src, d: _resealed_copy(src, d / "io.onnx", _widen_goal),
         "graph tensor 'goal' has size 3 but the embedded spec says 2"),
        # Read whole, these hang the process (a FIFO's open waits for a writer) or fill the
        # memory (/dev/zero never ends): refused before reading.
        (lambda src, d: _fifo(d / "fifo.onnx"), r"cannot read \(a FIFO, not a regular file\)"),
        (lambda src, d: Path("/dev/zero"), r"a character device, not a regular file"),
        (lambda src, d: _resealed_copy(src, d / "external.onnx", _external_weight),
         "keeps its data in another file .* re-export"),
        (lambda src, d: _resealed_copy(src, d / "loop.onnx", _loop_op),
         r"operators crl's exporter does not write \('Loop'\)"),
        (lambda src, d: _resealed_copy(src, d / "custom.onnx", _custom_op),
         r"does not write \('com\.example\.XXXX.*…'\)"),
    ],
)
def test_bad_policy_files(
    toy_policy: tuple[PolicySpec, dict, Path], tmp_path: Path, make, match: str
) -> None:
    path = make(toy_policy[2], tmp_path)
    with pytest.raises(PolicyError, match=match) as e:
        load_policy(path, "ort")
    assert "\n" not in str(e.value) and len(str(e.value)) < 500


def test_read_spec(toy_policy: tuple[PolicySpec, dict, Path]) -> None:
    assert read_spec(toy_policy[2]) == toy_policy[0]


def test_backend_choice_errors(toy_policy: tuple[PolicySpec, dict, Path]) -> None:
    with pytest.raises(PolicyError, match="backend: 'tflite'"):
        load_policy(toy_policy[2], "tflite")
    with pytest.raises(PolicyError, match="build an engine from it"):
        load_policy(toy_policy[2], "trt")
    with pytest.raises(PolicyError, match="backend 'trt'"):
        load_policy(toy_policy[2].with_suffix(".engine"), "ort")
    with pytest.raises(PolicyError, match="loads a run directory"):
        load_policy(toy_policy[2], "jax")
    with pytest.raises(PolicyError, match="not a training run" if HAS_JAX else "train extra"):
        load_policy(toy_policy[2].parent, "jax")
    with pytest.raises(PolicyError, match="spin: ONNX Runtime thread spinning applies"):
        load_policy(toy_policy[2].parent, "jax", spin=True)


def test_spinning_threads_give_the_same_actions(toy_policy: tuple[PolicySpec, dict, Path]) -> None:
    obs = np.random.default_rng(0).standard_normal((5, toy_policy[0].obs_dim), dtype=np.float32)
    goal = np.zeros((5, toy_policy[0].goal_dim), np.float32)
    reference = load_policy(toy_policy[2]).act(obs, goal)
    spinning = load_policy(toy_policy[2], threads=2, spin=True)
    np.testing.assert_array_equal(spinning.act(obs, goal), reference)


def test_ort_session_runs_on_the_best_providers_here(
    toy_policy: tuple[PolicySpec, dict, Path],
) -> None:
    """A real ONNX Runtime session: it runs on the best providers this onnxruntime has
    (TensorRT, then CUDA, then the CPU; here, without onnxruntime-gpu, the CPU), and asking for
    one it lacks is refused in one line naming what to install."""
    import onnxruntime

    from crl.runtime.ort_backend import CPU, CUDA, PREFERENCE, TENSORRT

    available = onnxruntime.get_available_providers()
    policy = load_policy(toy_policy[2], "ort")
    assert policy.providers == [p for p in PREFERENCE if p in available]
    cpu_only = load_policy(toy_policy[2], "ort", providers=[CPU])
    assert cpu_only.providers == [CPU]
    obs = np.random.default_rng(0).standard_normal((4, OBS), dtype=np.float32)
    goal = np.zeros((4, GOAL), np.float32)
    np.testing.assert_allclose(policy.act(obs, goal), cpu_only.act(obs, goal), atol=2e-2)
    absent = [p for p in (TENSORRT, CUDA) if p not in available]
    if absent:
        with pytest.raises(PolicyError, match=rf"^providers: \['{absent[0]}'\] not in"
                           r".*install onnxruntime-gpu") as e:
            load_policy(toy_policy[2], "ort", providers=[absent[0], CPU])
        assert "\n" not in str(e.value) and "re-export" not in str(e.value)  # the file is fine


def test_tensorrt_provider_caches_its_engines(
    toy_policy: tuple[PolicySpec, dict, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With onnxruntime-gpu on a GPU: the TensorRT provider builds its engine into the cache
    under XDG_CACHE_HOME on the first start, so a restarted robot does not build again."""
    import onnxruntime

    from crl.runtime.ort_backend import TENSORRT

    if TENSORRT not in onnxruntime.get_available_providers():
        pytest.skip("no TensorRT execution provider in this onnxruntime (onnxruntime-gpu only)")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    policy = load_policy(toy_policy[2], "ort")
    assert policy.providers[0] == TENSORRT
    policy.act(np.zeros(OBS), np.zeros(GOAL))
    cache = tmp_path / "crl" / "ort_tensorrt"
    assert any(p.suffix == ".engine" for p in cache.iterdir()), sorted(cache.iterdir())


def test_tensorrt_provider_options_stand_in(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stand-in: what the ort backend would ask onnxruntime-gpu for, with its provider list
    faked (this onnxruntime has no TensorRT provider to take the options; the test above runs
    them where one is): the TensorRT provider with its engine and timing caches under
    XDG_CACHE_HOME, fp16 kernels only for an fp16 file, then CUDA, then the CPU."""
    import onnxruntime

    from crl.runtime.ort_backend import CPU, CUDA, TENSORRT, providers_for

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: [CUDA, CPU, TENSORRT])
    cache = tmp_path / "crl" / "ort_tensorrt"
    for precision in ("fp32", "fp16"):
        (trt, options), cuda, cpu = providers_for(precision)
        assert (trt, cuda, cpu) == (TENSORRT, CUDA, CPU)
        assert options["trt_engine_cache_enable"] and options["trt_timing_cache_enable"]
        assert options["trt_engine_cache_path"] == options["trt_timing_cache_path"] == str(cache)
        assert options["trt_fp16_enable"] == (precision == "fp16")
    assert cache.is_dir()
    assert providers_for("fp32", [CUDA, CPU]) == [CUDA, CPU]


def test_runtime_imports_no_jax() -> None:
    code = (
        "import pkgutil, importlib, sys, crl.runtime\n"
        "names = [m.name for m in pkgutil.iter_modules(crl.runtime.__path__)]\n"
        "for n in names: importlib.import_module('crl.runtime.' + n)\n"
        "bad = [m for m in sys.modules if m == 'jax' or m.startswith(('jax.', 'crl.train'))]\n"
        "assert not bad, bad\n"
        "assert {'policy', 'backend', 'ort_backend', 'trt_backend', 'bench'} <= set(names)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr


def test_bench_statistics(toy_policy: tuple[PolicySpec, dict, Path]) -> None:
    policy = load_policy(toy_policy[2])
    summary, samples = bench_policy(policy, BenchConfig((1, 4), iterations=30, warmup=3), 1e10)
    assert [r["batch"] for r in summary["results"]] == [1, 4]
    for r in summary["results"]:
        assert 0 < r["p50_ms"] <= r["p90_ms"] <= r["p99_ms"] <= r["max_ms"]
        assert r["iterations"] == 30 and r["throughput_per_s"] > 0
    assert summary["bandwidth_bound_ms"] == pytest.approx(policy.weight_bytes / 1e10 * 1e3)
    assert samples[4].shape == (30,)
    assert memory_bandwidth(nbytes=8 * 2**20, repeats=2) > 1e8
    assert memory_bandwidth(nbytes=8 * 2**20, repeats=2, cores=2) > 1e8
    assert all(r["rate_hz"] == 0.0 and r["cpu_percent"] > 0 for r in summary["results"])
    steal = summary["cpu_steal_percent"]
    assert steal is None or 0 <= steal <= 100


def test_steal_from_proc_stat(tmp_path: Path) -> None:
    """Steal is the 8th counter of /proc/stat's first line; anything else reads as unknown."""
    stat = tmp_path / "stat"
    stat.write_text("cpu  10 0 5 80 1 0 0 4 3 0\ncpu0 5 0 2 40 0 0 0 2 1 0\n")
    assert cpu_times(stat) == (4, 100)  # guest (3) is inside user already: not added again
    assert steal_percent((4, 100), (14, 200)) == pytest.approx(10.0)
    assert steal_percent((4, 100), (4, 100)) is None and steal_percent(None, (4, 100)) is None
    for text in ("cpu  10 0 5 80\n", "intr 1 2 3 4 5 6 7 8 9\n", "cpu  a b c d e f g h\n"):
        stat.write_text(text)
        assert cpu_times(stat) is None
    assert cpu_times(tmp_path / "missing") is None
    if Path("/proc/stat").exists():
        steal, total = cpu_times() or (-1, -1)
        assert 0 <= steal <= total


class SimulatedTime:
    """`crl.runtime.bench`'s clocks, simulated: sleeping advances the wall clock, a policy call
    advances it and the CPU clock by the call's cost."""

    def __init__(self) -> None:
        self.wall, self.cpu = 100.0, 10.0
        self.sleeps: list[float] = []

    def perf_counter(self) -> float:
        return self.wall

    def perf_counter_ns(self) -> int:
        return round(self.wall * 1e9)

    def process_time(self) -> float:
        return self.cpu

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.wall += seconds

    def work(self, seconds: float) -> None:
        self.wall += seconds
        self.cpu += seconds


class CostlyPolicy:
    """A policy whose calls take simulated time: `costs[i]` seconds for call i (cycled)."""

    def __init__(self, spec: PolicySpec, clock: SimulatedTime, costs: list[float]) -> None:
        self.spec, self.clock, self.costs, self.calls = spec, clock, costs, 0

    def act(self, obs: np.ndarray, goal: np.ndarray) -> np.ndarray:
        self.clock.work(self.costs[self.calls % len(self.costs)])
        self.calls += 1
        return np.zeros(self.spec.act_dim, np.float32)


def test_paced_bench_keeps_the_control_rate(
    toy_policy: tuple[PolicySpec, dict, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """At 50 Hz, calls of 2 ms each: one call a period on an absolute schedule, the rest of the
    period asleep (CPU use 10% of a core); a call that overruns its period is counted and the
    schedule restarts after it, with no burst of catch-up calls."""
    clock = SimulatedTime()
    monkeypatch.setattr("crl.runtime.bench.time", clock)
    policy = CostlyPolicy(toy_policy[0], clock, [0.002])
    config = BenchConfig((1,), iterations=25, warmup=2, rate_hz=50.0)
    start = clock.wall
    seconds, cpu_percent = time_calls(policy, 1, config)
    warmup = 2 * 0.002
    assert clock.wall - start - warmup == pytest.approx(25 * 0.02)
    np.testing.assert_allclose(seconds, 0.002, rtol=1e-6)
    np.testing.assert_allclose(clock.sleeps, 0.018, rtol=1e-6)
    assert cpu_percent == pytest.approx(10.0)
    r = summarize(seconds, 1, cpu_percent, config.rate_hz)
    assert r["rate_hz"] == 50.0 and r["calls_over_period"] == 0

    clock.sleeps.clear()
    overrun = CostlyPolicy(toy_policy[0], clock, [0.002, 0.002, 0.002, 0.05, 0.002, 0.002])
    config = BenchConfig((1,), iterations=6, warmup=0, rate_hz=50.0)
    seconds, _ = time_calls(overrun, 1, config)
    # the 50 ms call leaves no sleep after it, and the next call sleeps a full period's rest
    np.testing.assert_allclose(clock.sleeps, [0.018, 0.018, 0.018, 0.018, 0.018], rtol=1e-6)
    assert summarize(seconds, 1, 100.0, 50.0)["calls_over_period"] == 1


def test_bench_cli_writes_json_and_plot(
    toy_policy: tuple[PolicySpec, dict, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import onnxruntime

    out, plot = tmp_path / "r" / "result.json", tmp_path / "latency.png"
    plotting = ["--plot", str(plot)] if HAS_MATPLOTLIB else []  # the robot's install has none
    run_main(["bench", "--policy", str(toy_policy[2]), "--backend", "ort", "--batch", "1,2",
              "--iterations", "20", "--out", str(out), *plotting])
    assert "p99" in capsys.readouterr().out
    result = json.loads(out.read_text())
    assert result["backend"] == "ort" and result["precision"] == "fp32"
    assert result["device"]["cpu"] and result["device"]["cores"] >= 1
    assert {"python", "numpy", "onnxruntime"} <= set(result["versions"])
    assert result["versions"]["onnxruntime"] == onnxruntime.__version__
    assert result["memory_bandwidth_gb_s"] > 0 and len(result["results"]) == 2
    if HAS_MATPLOTLIB:
        assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    written = sorted(p.name for p in tmp_path.iterdir())
    assert written == (["latency.png", "r"] if plotting else ["r"])
    assert result["rate_hz"] == 0.0 and result["threads"] == 1 and result["spin"] is False

    run_main(["bench", "--policy", str(toy_policy[2]), "--batch", "1", "--iterations", "10",
              "--rate", "100", "--threads", "2", "--spin", "--out", str(out)])
    assert "calls over the period" in capsys.readouterr().out
    result = json.loads(out.read_text())
    assert result["rate_hz"] == 100.0 and result["threads"] == 2 and result["spin"] is True
    assert result["results"][0]["rate_hz"] == 100.0 and "calls_over_period" in result["results"][0]


def test_versions_name_jax_only_when_the_run_loaded_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """The runtime never imports jax: a result names jax's version only where the measured
    process had loaded it (the JAX backend), never merely because it is installed."""
    monkeypatch.delitem(sys.modules, "jax", raising=False)
    assert "jax" not in versions()
    if HAS_JAX:
        from importlib import metadata

        monkeypatch.setitem(sys.modules, "jax", importlib.import_module("jax"))
        assert versions()["jax"] == metadata.version("jax")


def test_bench_cli_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for argv, match in [
        (["--policy", str(tmp_path / "x.onnx")], "no such file"),
        (["--policy", str(tmp_path / "x.onnx"), "--batch", "1,a"], "--batch: '1,a'"),
        (["--policy", str(tmp_path / "x.onnx"), "--batch", "0"], "positive"),
        (["--policy", str(tmp_path / "x.onnx"), "--rate", "-5"], "--rate -5"),
        (["--policy", str(tmp_path / "x.onnx"), "--rate", "nan"], "--rate nan"),
    ]:
        with pytest.raises(SystemExit) as e:
            run_main(["bench", *argv, "--out", str(tmp_path / "r.json")])
        err = capsys.readouterr().err.strip()
        assert e.value.code == 2 and match in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "r.json").exists()
    with pytest.raises(PolicyError, match="providers: ONNX Runtime execution providers apply"):
        run_bench(tmp_path / "x.onnx", "trt", (1,), 10, tmp_path / "r.json",
                  providers=["CUDAExecutionProvider"])
    with pytest.raises(PolicyError, match="--iterations 0"):
        run_bench(tmp_path / "x.onnx", "ort", (1,), 0, tmp_path / "r.json")


def test_gpu_policy_latency_bench_quick(tmp_path: Path) -> None:
    """bench/policy_latency_gpu.py end to end on a small network, here on the CPU: each backend
    this machine can run, at each batch, and the reason for each it cannot."""
    pytest.importorskip("jax", reason=NEEDS_JAX)
    out = tmp_path / "gpu.json"
    script = Path(__file__).parents[1] / "bench" / "policy_latency_gpu.py"
    r = subprocess.run([sys.executable, str(script), "--quick", "--out", str(out)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    result = json.loads(out.read_text())
    assert result["benchmark"] == "policy_latency_gpu" and result["jax_devices"]
    jax_r = result["results"]["jax"]
    assert jax_r["max_abs_diff_vs_cpu_fp32"] <= 1e-5
    for b in (1, 64):
        assert jax_r[f"batch{b}"]["batch"] == b and jax_r[f"batch{b}"]["iterations"] == 50
        assert 0 < jax_r[f"batch{b}"]["p50_ms"] <= jax_r[f"batch{b}"]["p99_ms"]
    # every GPU backend is either measured or skipped with a reason
    gpu_backends = {"ort_cuda_fp32", "ort_tensorrt_fp32", "ort_tensorrt_fp16", "trt_fp32",
                    "trt_fp16"}
    assert gpu_backends == (set(result["results"]) | set(result["skipped"])) - {"jax"}
    assert all(result["skipped"].values())
    # without --quick it refuses a machine where jax sees no GPU, rather than mislabel CPU figures
    import jax

    if jax.default_backend() != "gpu":
        r = subprocess.run([sys.executable, str(script), "--out", str(tmp_path / "no.json")],
                           capture_output=True, text=True, timeout=300)
        assert r.returncode != 0 and "jax sees no GPU" in r.stderr
        assert not (tmp_path / "no.json").exists()


def test_latency_benches_refuse_settings_that_cannot_work(tmp_path: Path) -> None:
    bench = Path(__file__).parents[1] / "bench"
    for script, args, message in (
        ("policy_latency.py", ["--rounds", "0"], "rounds: must be at least 1, got 0"),
        ("policy_latency_gpu.py", ["--batches", "1", "0"], "batches: each must be at least 1"),
    ):
        out = tmp_path / "x.json"
        r = subprocess.run([sys.executable, str(bench / script), "--quick", *args, "--out",
                            str(out)], capture_output=True, text=True, timeout=300)
        assert r.returncode == 2 and message in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1 and not out.exists()


def test_policy_latency_bench_quick(tmp_path: Path) -> None:
    """bench/policy_latency.py end to end on a small network: every measurement in its JSON."""
    pytest.importorskip("jax", reason=NEEDS_JAX)  # it compares the exports with the JAX actor
    out = tmp_path / "latency.json"
    r = subprocess.run(
        [sys.executable, str(Path(__file__).parents[1] / "bench" / "policy_latency.py"), "--quick",
         "--paced-iterations", "10", "--out", str(out)],
        capture_output=True, text=True, timeout=300,
    )
    assert r.returncode == 0, r.stderr
    result = json.loads(out.read_text())
    fp32, fp16 = result["ort_batch1"]["fp32"], result["ort_batch1"]["fp16"]
    assert fp32["runtime_weight_bytes"] == fp32["weight_bytes"]
    # the CPU provider has no fp16 Gemm: it holds the fp16 file's weights as fp32
    assert fp16["runtime_weight_bytes"] > 1.9 * fp16["weight_bytes"]
    paced = result["ort_batch1_at_control_rate"]
    assert set(paced) == {"fp32", "int8"}
    # --paced-iterations 10 over 5 rounds: 2 a round, each policy and the bare read in turn
    for r in (*paced.values(), result["fp32_weight_read_batch1_at_control_rate"]):
        assert r["rate_hz"] == 50.0 and r["iterations"] == 10 and r["calls_over_period"] >= 0
    assert paced["fp32"]["p99_over_weight_read_p99"] == pytest.approx(
        paced["fp32"]["p99_ms"] / result["fp32_weight_read_batch1_at_control_rate"]["p99_ms"])
    for key in ("ort_fp32_2_threads_batch1", "ort_fp32_2_threads_spinning_batch1"):
        assert result[key]["p50_over_two_core_bound"] > 0
    assert result["memory_bandwidth_gb_s"]["two_cores"] > 0
    assert set(result["targets"]) == {"p99_le_1ms", "fp32_bandwidth_bound_le_1ms",
                                      "fp32_weight_read_p99_le_1ms",
                                      "fp32_p99_at_control_rate_le_1ms",
                                      "p50_within_2x_bandwidth_bound", "export_le_60s"}
    # the bare read of the fp32 weights' bytes, timed in the same rounds as the policies
    read = result["fp32_weight_read_batch1"]
    assert read["weight_bytes"] == fp32["weight_bytes"] and read["iterations"] == 100
    assert 0 < read["p50_ms"] <= read["p99_ms"]
    assert fp32["p99_over_weight_read_p99"] == pytest.approx(fp32["p99_ms"] / read["p99_ms"])
    assert set(result["cpu_steal_percent"]) == {"back_to_back", "paced"}
