"""Data-parallel and multi-process training, and bf16, on a forced multi-device CPU.

Each scenario runs in a subprocess (tests/scale_worker.py or the CLI): the device count of
`--xla_force_host_platform_device_count` must be in XLA_FLAGS before jax starts, and this pytest
process started jax long ago. Sizes are tiny (width 32, 8 envs, 3 iterations), and `PointMass`
(tests/test_trainer.py) stands in for MuJoCo, so each run costs a compile, not training. The
subprocesses share a persistent compilation cache, so a run that repeats an earlier one's
program on the same device count (a resume) does not compile it again.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from crl.testbed.closed_loop import free_base_port

pytest.importorskip("jax")

TESTS = Path(__file__).resolve().parent
WORKER = TESTS / "scale_worker.py"
TIMEOUT_S = 420
_CACHE: list[Path] = []  # the module's compilation cache directory, once made


@pytest.fixture(scope="module", autouse=True)
def _compilation_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    _CACHE[:] = [tmp_path_factory.mktemp("jax_cache")]


def _env(devices: int) -> dict[str, str]:
    env = dict(os.environ)
    if _CACHE:
        env["JAX_COMPILATION_CACHE_DIR"] = str(_CACHE[0])
        env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    flags = env.get("XLA_FLAGS", "").replace("--xla_force_host_platform_device_count", "--_x")
    env["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={devices}".strip()
    env["JAX_PLATFORMS"] = "cpu"
    for name in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
        env.pop(name, None)
    return env


def _worker(*args: str, devices: int = 4) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([sys.executable, str(WORKER), *args], env=_env(devices),
                          capture_output=True, text=True, timeout=TIMEOUT_S, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def _params(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as data:
        return {k: data[k] for k in data.files}


def _facts(path: Path) -> dict:
    return json.loads(path.with_suffix(".json").read_text())


def _assert_close(a: dict[str, np.ndarray], b: dict[str, np.ndarray], tol: float) -> None:
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=tol, atol=tol, err_msg=k)


@pytest.fixture(scope="module")
def sharded_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 3-iteration run on 4 devices (checkpoints after iterations 2 and 3); `four.npz` beside
    the run directory holds its final parameters."""
    root = tmp_path_factory.mktemp("sharded")
    _worker("train", str(root / "run"), str(root / "four.npz"), "4", "3")
    return root


def test_sharded_run_matches_the_single_device_run(sharded_run: Path, tmp_path: Path) -> None:
    """4 devices (2 envs and 4 batch rows each) end where 1 device ends, same global batch and
    seed: the negatives span the global batch, so the loss is the same function."""
    _worker("train", str(tmp_path / "one"), str(tmp_path / "one.npz"), "1", "3")
    one, four = _facts(tmp_path / "one.npz"), _facts(sharded_run / "four.npz")
    assert (one["mesh_devices"], four["mesh_devices"]) == (1, 4)
    assert four["buffer_shard_shape"][1] == 2 and four["env_shard_shape"][0] == 2  # 8 envs / 4
    assert four["params_replicated"] and one["sgd_steps"] == four["sgd_steps"] > 0
    _assert_close(_params(tmp_path / "one.npz"), _params(sharded_run / "four.npz"), 1e-5)


def test_sharded_checkpoint_resumes_on_one_device_or_sharded_and_exports(
    sharded_run: Path, tmp_path: Path
) -> None:
    """The 4-device run's last checkpoint continues for one more iteration on 1 device and,
    from a copy, on 4 devices: both end with the same parameters; the 1-device run exports."""
    from crl.export.cli import main as export_main
    from crl.runtime.ort_backend import OrtPolicy
    from crl.train.checkpoint import load_run

    sharded, copy = tmp_path / "sharded", tmp_path / "copy"
    shutil.copytree(sharded_run / "run", sharded)
    shutil.copytree(sharded_run / "run", copy)
    _worker("train", str(sharded), str(tmp_path / "one.npz"), "1", "4", "--resume", devices=1)
    _worker("train", str(copy), str(tmp_path / "four.npz"), "4", "4", "--resume")
    assert _facts(tmp_path / "one.npz")["mesh_devices"] == 1
    assert _facts(tmp_path / "four.npz")["mesh_devices"] == 4
    assert _facts(tmp_path / "one.npz")["env_steps"] == 4 * 8 * 5
    one = _params(tmp_path / "one.npz")
    _assert_close(one, _params(tmp_path / "four.npz"), 1e-5)
    first = _params(sharded_run / "four.npz")
    assert any(not np.allclose(one[k], v) for k, v in first.items())  # it did train on

    out = tmp_path / "policy.onnx"
    export_main(["onnx", "--run", str(sharded), "--out", str(out)])
    run = load_run(sharded)
    policy = OrtPolicy(out)
    obs = np.random.default_rng(0).uniform(-1, 1, (3, run.spec.obs_dim)).astype(np.float32)
    goal = np.random.default_rng(1).uniform(-1, 1, (3, run.spec.goal_dim)).astype(np.float32)
    _assert_close({"a": policy.act(obs, goal)}, {"a": _jax_action(run, obs, goal)}, 1e-4)
    np.testing.assert_array_equal(run.params["actor"]["mean"]["kernel"],
                                  one["['actor']['mean']['kernel']"])


def _jax_action(run, obs: np.ndarray, goal: np.ndarray) -> np.ndarray:
    from crl.train.config import NetworkConfig
    from crl.train.networks import Actor, deterministic_action

    n = run.spec.network
    actor = Actor(NetworkConfig(n.depth, n.width, n.repr_dim, n.residual), run.spec.act_dim)
    return np.asarray(deterministic_action(actor, run.params["actor"], obs, goal))


def test_two_processes_on_localhost_agree(tmp_path: Path) -> None:
    """jax.distributed over 127.0.0.1: 2 processes × 2 CPU devices, each holding its own 4 envs,
    train one run through gloo's CPU collectives and end with the same parameters."""
    address = f"127.0.0.1:{free_base_port(count=1)}"  # outside the ephemeral range
    run = tmp_path / "run"
    procs = [
        subprocess.Popen([sys.executable, str(WORKER), "process", str(run),
                          str(tmp_path / f"p{i}.npz"), address, "2", str(i)],
                         env=_env(2), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in range(2)
    ]
    try:
        outputs = [p.communicate(timeout=TIMEOUT_S) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, (_, err) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, err[-3000:]
    facts = [_facts(tmp_path / f"p{i}.npz") for i in range(2)]
    for f in facts:
        assert (f["process_count"], f["devices"], f["mesh_devices"]) == (2, 4, 4)
        assert f["env_shard_shape"][0] == 2 and f["sgd_steps"] > 0
    p0, p1 = _params(tmp_path / "p0.npz"), _params(tmp_path / "p1.npz")
    for k in p0:
        np.testing.assert_array_equal(p0[k], p1[k], err_msg=k)
    assert (run / "config.json").is_file() and (run / "eval.json").is_file()


def test_bf16_trains_reacher_with_finite_losses(tmp_path: Path) -> None:
    """`--dtype bf16` through the CLI on the real task: the run's finiteness check stops on any
    non-finite loss, so exit 0 means every loss was finite; parameters stay float32."""
    run = tmp_path / "bf16"
    argv = ["reacher", "--preset", "quick", "--dtype", "bf16", "--depth", "4", "--width", "32",
            "--repr-dim", "8", "--num-envs", "8", "--unroll-length", "4", "--batch-size", "16",
            "--buffer-steps", "16", "--min-replay-steps", "4", "--env-steps-per-update", "8",
            "--total-steps", str(8 * 4 * 3), "--eval-every", str(8 * 4 * 3),
            "--eval-episodes", "4", "--devices", "2", "--out", str(run)]
    code = ("import sys; from crl.train.cli import main; sys.exit(main(sys.argv[1:]))")
    done = subprocess.run([sys.executable, "-c", code, *argv], env=_env(2), capture_output=True,
                          text=True, timeout=TIMEOUT_S, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    config = json.loads((run / "config.json").read_text())
    assert config["network"]["dtype"] == "bf16"
    events = json.loads((run / "eval.json").read_text())["evaluations"]
    assert events[-1]["sgd_steps"] > 0
    from crl.train.checkpoint import load_run

    params = load_run(run).params
    import jax

    for leaf in jax.tree.leaves(params):
        assert leaf.dtype == np.float32 and np.all(np.isfinite(leaf))


def test_bf16_networks_compute_in_bf16_with_float32_parameters_and_outputs() -> None:
    """Mixed precision as specified: Dense matmuls in bf16, float32 parameters, LayerNorm
    statistics in float32 (flax promotes them), and float32 outputs for the losses."""
    import jax
    import jax.numpy as jnp

    from crl.train.config import NetworkConfig
    from crl.train.networks import Actor, Encoder

    config = NetworkConfig(depth=4, width=16, repr_dim=8, dtype="bf16")
    encoder, x = Encoder(config), jnp.ones((2, 5))
    params = encoder.init(jax.random.PRNGKey(0), x)["params"]
    assert {leaf.dtype for leaf in jax.tree.leaves(params)} == {jnp.dtype(jnp.float32)}
    jaxpr = str(jax.make_jaxpr(lambda p: encoder.apply({"params": p}, x))(params))
    assert "dot_general" in jaxpr and "bf16[2,16]" in jaxpr
    assert encoder.apply({"params": params}, x).dtype == jnp.float32
    actor = Actor(config, 3)
    actor_params = actor.init(jax.random.PRNGKey(1), x, x[:, :2])["params"]
    mean, log_std = actor.apply({"params": actor_params}, x, x[:, :2])
    assert mean.dtype == log_std.dtype == jnp.float32
    fp32 = Encoder(NetworkConfig(depth=4, width=16, repr_dim=8)).apply({"params": params}, x)
    np.testing.assert_allclose(encoder.apply({"params": params}, x), fp32, atol=0.1)


def test_devices_and_processes_are_checked_before_anything_compiles(tmp_path: Path) -> None:
    """A device count that does not divide the envs or the batch, more devices than there are,
    or process flags without a coordinator: one ConfigError naming the field."""
    import dataclasses

    from crl.core.usage import ConfigError
    from crl.train.agent import make_mesh
    from crl.train.cli import init_distributed
    from crl.train.config import TrainConfig, validate_devices

    config = TrainConfig(task="reacher")  # 512 envs, batch 512
    validate_devices(config, 4)
    with pytest.raises(ConfigError, match=r"^num_envs: 512 is not divisible by --devices 3"):
        validate_devices(config, 3)
    odd_batch = dataclasses.replace(config, algo=dataclasses.replace(config.algo, batch_size=250))
    with pytest.raises(ConfigError, match=r"^batch_size: 250 is not divisible by --devices 4"):
        validate_devices(odd_batch, 4)
    with pytest.raises(ConfigError, match=r"^devices: 64 requested, \d+ available"):
        make_mesh(64)
    assert make_mesh(1).shape == {"data": 1}
    with pytest.raises(ConfigError, match=r"^coordinator_address: a multi-process run needs"):
        init_distributed(None, 2, 1)
    with pytest.raises(ConfigError, match=r"^process_id: 2 is not in \[0, 2\)"):
        init_distributed("127.0.0.1:1", 2, 2)
    assert init_distributed(None, None, None) is False
