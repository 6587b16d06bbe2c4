"""Run directories and orbax checkpoints.

A run directory holds `config.json`, `spec.json`, `eval.json`, TensorBoard events under `tb/`,
and `checkpoints/<env_step>/` with three orbax items:
    state   the full training state (parameters, optimiser moments, α, replay buffer, env states,
            RNG), so `--resume` continues the very same run;
    params  {actor, sa_encoder, g_encoder}: what `load_run` (export, runtime, eval) reads;
    meta    JSON: step, spec (network and provenance filled), evaluation metrics.
Orbax writes each checkpoint into a temporary directory and renames it when complete, so a run
killed mid-save leaves the previous checkpoints intact and the partial one is never listed.
Kept: the `keep` most recent plus the best by evaluation time-at-goal.
"""

from __future__ import annotations

import json
import logging
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint.checkpoint_managers import preservation_policy

from crl.sim.spec import PolicySpec

CHECKPOINTS = "checkpoints"
CONFIG_FILE = "config.json"
SPEC_FILE = "spec.json"
BEST_METRIC = "time_at_goal"

# Orbax logs every save and restore through absl at INFO/WARNING; a run's console is ours.
logging.getLogger("absl").setLevel(logging.ERROR)


class CheckpointError(ValueError):
    """A run directory or checkpoint that is missing or unreadable (one-line message)."""


# Completes a state restored from an older checkpoint: (state, missing leaf paths) -> state.
Upgrade = Callable[[Any, set[str]], Any]


@dataclass(frozen=True)
class LoadedRun:
    """A trained policy as the exporter and runtime need it."""

    config: dict[str, Any]
    spec: PolicySpec
    params: dict[str, Any]  # {"actor", "sa_encoder", "g_encoder"}: inner flax `params` dicts
    step: int  # env steps at the checkpoint


def git_commit() -> str:
    """HEAD of the repository this package runs from, or "" outside a git checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.stdout.strip() if out.returncode == 0 else ""


def _is_key(x: Any) -> bool:
    return hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jax.dtypes.prng_key)


def _leaf_name(index: int, path: tuple[Any, ...]) -> str:
    parts = []
    for k in path:
        part = getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))
        parts.append("".join(ch for ch in str(part) if ch.isalnum() or ch == "_"))
    return f"{index:04d}." + ".".join(parts)


def _to_saveable(tree: Any) -> dict[str, Any]:
    """A flat {name: array} of the state for orbax, which cannot store zero-size arrays (MJX
    keeps some, e.g. `act` of a model without activations) nor typed PRNG keys (stored as their
    uint32 data). Names carry the pytree path, so a checkpoint is readable on its own."""
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {
        _leaf_name(i, path): jax.random.key_data(x) if _is_key(x) else x
        for i, (path, x) in enumerate(leaves)
        if np.size(x) > 0
    }


def _from_saveable(saved: dict[str, Any], template: Any) -> Any:
    """Inverse of `_to_saveable`; zero-size leaves and the tree structure come from `template`."""
    leaves, treedef = jax.tree_util.tree_flatten_with_path(template)
    out = []
    for i, (path, like) in enumerate(leaves):
        name = _leaf_name(i, path)
        if name not in saved:
            out.append(like)
            continue
        x = saved[name]
        out.append(jax.random.wrap_key_data(x, impl=jax.random.key_impl(like)) if _is_key(like)
                   else x)
    return jax.tree_util.tree_unflatten(treedef, out)


class Checkpointer:
    """Saves and restores one run's checkpoints (synchronously, atomically)."""

    def __init__(self, run_dir: Path, keep: int) -> None:
        policy = preservation_policy.AnyPreservationPolicy([
            preservation_policy.LatestN(n=keep),
            preservation_policy.BestN(
                get_metric_fn=lambda m: m[BEST_METRIC], n=1, keep_checkpoints_without_metrics=False
            ),
        ])
        options = ocp.CheckpointManagerOptions(
            preservation_policy=policy,
            enable_async_checkpointing=False,
            cleanup_tmp_directories=True,
        )
        self.directory = Path(run_dir).resolve() / CHECKPOINTS
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        step: int | None = self._manager.latest_step()
        return step

    def path(self, step: int) -> Path:
        return self.directory / str(step)

    def save(
        self,
        step: int,
        state: Any,
        params: dict[str, Any],
        meta: dict[str, Any],
        metrics: dict[str, float],
    ) -> Path:
        self._manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(_to_saveable(state)),
                params=ocp.args.StandardSave(params),
                meta=ocp.args.JsonSave(meta),
            ),
            metrics=metrics,
        )
        self._manager.wait_until_finished()
        return self.path(step)

    def restore_state(self, step: int, template: Any, upgrade: Upgrade | None = None) -> Any:
        """The full training state at `step`, shaped like `template` (a freshly built state).

        A checkpoint written before the state gained leaves (e.g. the replay's episode index)
        restores through `upgrade(state, missing)`: `state` is `template` with every leaf the
        checkpoint holds (matched by pytree path), `missing` the paths it lacks, and `upgrade`
        fills those in (or raises CheckpointError).
        """
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, _to_saveable(template))
        try:
            restored = self._manager.restore(
                step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract))
            )
        except (ValueError, KeyError, FileNotFoundError) as e:
            older = self._restore_older(step, template, upgrade) if upgrade else None
            if older is not None:
                return older
            raise CheckpointError(
                f"{self.path(step)}: cannot restore the training state ({_first_line(e)}); "
                "was it written with a different config?"
            ) from None
        return _from_saveable(restored.state, template)

    def _restore_older(self, step: int, template: Any, upgrade: Upgrade) -> Any | None:
        """The state from a checkpoint whose leaves are a subset of `template`'s, same shapes,
        completed by `upgrade`; None when it is not that (a different config, say)."""
        try:
            saved = self._manager.restore(
                step, args=ocp.args.Composite(state=ocp.args.StandardRestore())
            ).state
        except (ValueError, KeyError, FileNotFoundError):
            return None
        by_path = {name.split(".", 1)[1]: x for name, x in saved.items()}
        leaves, treedef = jax.tree_util.tree_flatten_with_path(template)
        out, missing = [], set()
        for i, (path, like) in enumerate(leaves):
            name = _leaf_name(i, path).split(".", 1)[1]
            if name not in by_path:
                if np.size(like) > 0:  # zero-size leaves are never stored
                    missing.add(name)
                out.append(like)
                continue
            x = by_path.pop(name)
            stored_like = jax.random.key_data(like) if _is_key(like) else like
            if np.shape(x) != np.shape(stored_like):
                return None
            out.append(jax.random.wrap_key_data(x, impl=jax.random.key_impl(like))
                       if _is_key(like) else jnp.asarray(x, like.dtype))
        if by_path:  # leaves this code no longer has: not an older layout of this state
            return None
        return upgrade(jax.tree_util.tree_unflatten(treedef, out), missing)

    def close(self) -> None:
        self._manager.close()


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def checkpoint_steps(run_dir: Path) -> list[int]:
    """Steps of the complete checkpoints in a run (temporary, half-written ones excluded)."""
    directory = Path(run_dir) / CHECKPOINTS
    if not directory.is_dir():
        return []
    return sorted(int(p.name) for p in directory.iterdir() if p.is_dir() and p.name.isdigit())


def best_step(run_dir: Path) -> int:
    """The kept checkpoint with the best evaluation time at goal (the one the trainer keeps
    beside the latest ones), so a deployment takes the best policy the run produced."""
    scored: list[tuple[float, int]] = []
    for step in checkpoint_steps(run_dir):
        path = Path(run_dir) / CHECKPOINTS / str(step) / "meta" / "metadata"
        try:
            evaluation = json.loads(path.read_text()).get("evaluation") or {}
        except (OSError, ValueError) as e:
            raise CheckpointError(f"{path}: unreadable checkpoint metadata ({e})") from None
        if BEST_METRIC in evaluation.get("train", {}):
            scored.append((float(evaluation["train"][BEST_METRIC]), step))
    if not scored:
        raise CheckpointError(f"{run_dir}: no checkpoint holds an evaluation to pick the best by")
    return max(scored)[1]


def load_run(run_dir: Path, step: int | None = None) -> LoadedRun:
    """Parameters, spec and config of a run at `step` (the latest checkpoint when None)."""
    run_dir = Path(run_dir)
    config_path = run_dir / CONFIG_FILE
    if not config_path.is_file():
        raise CheckpointError(f"{run_dir}: not a training run (no {CONFIG_FILE})")
    steps = checkpoint_steps(run_dir)
    if not steps:
        raise CheckpointError(f"{run_dir}: the run has no checkpoint yet")
    if step is None:
        step = steps[-1]
    elif step not in steps:
        raise CheckpointError(f"{run_dir}: no checkpoint at step {step}; available: {steps}")
    path = (run_dir / CHECKPOINTS / str(step)).resolve()
    try:
        config = json.loads(config_path.read_text())
        meta = ocp.Checkpointer(ocp.JsonCheckpointHandler()).restore(path / "meta")
        spec = PolicySpec.from_dict(meta["spec"])
        params = ocp.StandardCheckpointer().restore(path / "params")
    except (OSError, ValueError, KeyError, TypeError) as e:  # JSON, spec and orbax errors
        raise CheckpointError(f"{path}: unreadable checkpoint ({_first_line(e)})") from None
    params = jax.tree.map(np.asarray, params)
    missing = {"actor", "sa_encoder", "g_encoder"} - set(params)
    if missing:
        raise CheckpointError(f"{path}: checkpoint lacks parameters {sorted(missing)}")
    return LoadedRun(config=config, spec=spec, params=params, step=step)
