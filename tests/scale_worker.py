"""Subprocess side of tests/test_scale.py: training runs on a forced multi-device CPU.

`--xla_force_host_platform_device_count` only takes effect before jax starts, and the pytest
process has long started it, so each scenario runs here in a fresh interpreter whose XLA_FLAGS
the test sets. Results go to files the test reads (npz of parameters, JSON of facts).

    python scale_worker.py train RUN_DIR OUT.npz DEVICES ITERATIONS [--resume] [--dtype bf16]
    python scale_worker.py process RUN_DIR OUT.npz ADDRESS COUNT INDEX
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import jax
import numpy as np

from crl.sim.setup import setup_jax
from crl.train.config import AlgoConfig, EvalConfig, NetworkConfig, ReplayConfig, TrainConfig

NUM_ENVS, UNROLL = 8, 5


def config(iterations: int, dtype: str = "fp32") -> TrainConfig:
    """Tiny sizes that every tested device count (1, 2, 4) divides; SGD from iteration 2 on."""
    return TrainConfig(
        task="point_mass",
        seed=3,
        total_steps=NUM_ENVS * UNROLL * iterations,
        network=NetworkConfig(depth=4, width=32, repr_dim=8, dtype=dtype),  # type: ignore[arg-type]
        algo=AlgoConfig(batch_size=16),
        replay=ReplayConfig(num_envs=NUM_ENVS, unroll_length=UNROLL, env_steps_per_update=10.0,
                            buffer_steps=40, min_replay_steps=10),
        eval=EvalConfig(eval_every=NUM_ENVS * UNROLL * 2, eval_episodes=8, held_out=False),
        keep_checkpoints=5,
        log_every=1,
    )


def flat(params: dict) -> dict[str, np.ndarray]:
    leaves = jax.tree_util.tree_flatten_with_path(jax.device_get(params))[0]
    return {jax.tree_util.keystr(path): np.asarray(x, np.float32) for path, x in leaves}


def main(argv: list[str]) -> None:
    setup_jax()  # its XLA flags before jax starts
    from test_trainer import PointMass

    from crl.train.trainer import train

    mode, run_dir, out = argv[0], Path(argv[1]), Path(argv[2])
    if mode == "train":
        devices, iterations = int(argv[3]), int(argv[4])
        dtype = "bf16" if "--dtype=bf16" in argv else "fp32"
        result = train(config(iterations, dtype), run_dir, resume="--resume" in argv,
                       env=PointMass(episode_length=7), progress=False, devices=devices)
    elif mode == "process":
        from crl.train.cli import init_distributed

        address, count, index = argv[3], int(argv[4]), int(argv[5])
        # gloo's TCP collectives listen on this host's name by default; the test stays on
        # loopback (jax passes no address through, so it is given here).
        from jax._src.lib import _jax

        make = _jax.make_gloo_tcp_collectives
        _jax.make_gloo_tcp_collectives = lambda **kw: make(**kw, hostname="127.0.0.1")
        assert init_distributed(address, count, index)
        result = train(config(3), run_dir, env=PointMass(episode_length=7), progress=False)
    else:
        raise SystemExit(f"unknown mode {mode}")
    state = result.state
    facts = {
        "devices": len(jax.devices()),
        "process_count": jax.process_count(),
        "mesh_devices": len(state.buffer.data.obs.sharding.device_set),
        "buffer_shard_shape": list(state.buffer.data.obs.addressable_shards[0].data.shape),
        "env_shard_shape": list(state.env_state.obs.addressable_shards[0].data.shape),
        "params_replicated": all(x.sharding.is_fully_replicated
                                 for x in jax.tree.leaves(state.agent.params)),
        "sgd_steps": int(state.sgd_steps),
        "env_steps": result.env_steps,
        "metrics_finite": [bool(np.isfinite(e["train"]["final_distance_median"]))
                           for e in result.evaluations],
    }
    np.savez(out, **flat(state.agent.params))
    out.with_suffix(".json").write_text(json.dumps(facts))


if __name__ == "__main__":
    main(sys.argv[1:])
