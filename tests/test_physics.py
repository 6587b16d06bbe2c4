"""`--physics jax|warp`: jax stays the default and steps as before; warp refuses in one line
where it cannot run (this machine: no warp-lang, no GPU), before anything compiles."""

from __future__ import annotations

import dataclasses
import importlib.metadata
import subprocess
import sys
from pathlib import Path
from typing import get_args

import pytest

pytest.importorskip("jax")

import jax
import jax.numpy as jnp

from crl.core.usage import ConfigError
from crl.sim import tasks
from crl.sim.env import jit
from crl.sim.physics import PHYSICS, check_physics
from crl.train.config import PhysicsSetting, TrainConfig, preset, validate

ROOT = Path(__file__).resolve().parents[1]


def _warp_installed() -> bool:
    try:
        importlib.metadata.version("warp-lang")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


no_warp = pytest.mark.skipif(_warp_installed(), reason="warp-lang is installed here")


def test_physics_names_agree() -> None:
    assert get_args(PhysicsSetting) == PHYSICS == ("jax", "warp")


def test_jax_is_the_default_and_steps_as_before() -> None:
    """`physics="jax"` builds the default env (same model and start data on the device), and
    `reset_if_done`'s Data.where merge gives what the leaf-wise `where` it replaced gave."""
    default, explicit = tasks.make("reacher", dr="train"), tasks.make("reacher", physics="jax")
    assert default.physics == explicit.physics == "jax"
    assert default.mjx_model.impl.value == default._data0.impl.value == "jax"
    for a, b in ((default.mjx_model, explicit.mjx_model), (default._data0, explicit._data0)):
        assert jax.tree.structure(a) == jax.tree.structure(b)
        assert all(jnp.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b),
                                                         strict=True))

    def leafwise(state):  # reset_if_done before Data.where
        return jax.tree.map(lambda f, s: jnp.where(state.done, f, s), default.reset(state.rng),
                            state)

    def run(key):
        states = jax.vmap(default.reset)(jax.random.split(key, 3))
        states = jax.vmap(default.step)(states, jnp.full((3, default.spec.act_dim), 0.3))
        # End one episode of three: the merge takes the fresh one there only.
        states = states.replace(done=jnp.array([True, False, False]))
        return jax.vmap(default.reset_if_done)(states), jax.vmap(leafwise)(states), states

    new, old, stepped = jit(run)(jax.random.PRNGKey(3))
    for a, b in zip(jax.tree.leaves(new), jax.tree.leaves(old), strict=True):
        assert jnp.array_equal(a, b)
    assert not jnp.array_equal(new.data.qpos[0], stepped.data.qpos[0])  # env 0 was reset
    assert jnp.array_equal(new.data.qpos[1:], stepped.data.qpos[1:])


@no_warp
def test_warp_names_the_missing_package_in_one_line() -> None:
    with pytest.raises(ConfigError) as e:
        tasks.make("reacher", physics="warp")
    message = str(e.value)
    assert "\n" not in message
    assert message.startswith("physics: warp needs NVIDIA Warp")
    assert "mujoco-mjx[warp]" in message and "warp-lang" in message


def test_warp_refuses_what_it_cannot_do_before_checking_the_machine() -> None:
    # The paper humanoid observes cinert/cvel, which MJX's com_vel computes on jax only.
    with pytest.raises(ConfigError, match=r"^physics: warp cannot compute the observed "
                                          r"cinert/cvel: .*com_vel"):
        tasks.make("paper_humanoid", physics="warp")
    with pytest.raises(ConfigError, match=r"^physics: warp runs on one device, not 2"):
        check_physics("warp", devices=2)


def test_unknown_physics_is_rejected() -> None:
    with pytest.raises(ConfigError, match=r"physics: 'bullet' is not one of jax, warp"):
        tasks.make("reacher", physics="bullet")
    config = dataclasses.replace(preset("quick", "reacher"), physics="bullet")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"^physics: 'bullet' is not 'jax' or 'warp'"):
        validate(config)


def test_config_records_physics() -> None:
    config = dataclasses.replace(preset("quick", "reacher"), physics="warp")
    stored = config.to_dict()
    assert stored["physics"] == "warp"
    assert TrainConfig.from_dict(stored) == config


@no_warp
def test_train_cli_prints_the_one_line_and_exits_2(tmp_path, capsys) -> None:
    from crl.train import cli

    out = tmp_path / "run"
    assert cli.main(["reacher", "--preset", "quick", "--physics", "warp", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("crl-train: error: physics: warp needs NVIDIA Warp")
    assert len(err.splitlines()) == 1
    assert not out.exists()  # refused before the run directory is written


def test_train_cli_rejects_an_unknown_physics(tmp_path) -> None:
    from crl.train import cli

    with pytest.raises(SystemExit) as e:
        cli.main(["reacher", "--physics", "bullet", "--out", str(tmp_path / "run")])
    assert e.value.code == 2


@no_warp
def test_sim_cli_rollout_prints_the_one_line_and_exits_2(capsys) -> None:
    from crl.sim import cli

    assert cli.main(["rollout", "reacher", "--physics", "warp"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("crl-sim: error: physics: warp needs NVIDIA Warp")


@no_warp
def test_sim_throughput_bench_refuses_warp_before_measuring(tmp_path) -> None:
    out = tmp_path / "x.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "sim_throughput.py"), "--quick",
         "--physics", "jax", "warp", "--out", str(out)],
        capture_output=True, text=True, timeout=120, check=False, cwd=ROOT,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1].startswith(
        "sim_throughput: physics: warp needs NVIDIA Warp")
    assert not out.exists()
