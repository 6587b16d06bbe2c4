"""Run directories and orbax checkpoints.

A run directory holds `config.json`, `spec.json`, `eval.json`, TensorBoard events under `tb/`,
and `checkpoints/<env_step>/` with three orbax items:
    state   the full training state (parameters, optimiser moments, α, replay buffer, env states,
            RNG), so `--resume` continues the very same run;
    params  {actor, sa_encoder, g_encoder}: what `load_run` (export, runtime, eval) reads;
    meta    JSON: the checkpoint format (`CHECKPOINT_FORMAT`), step, spec (network and
            provenance filled), evaluation metrics.
Orbax writes each checkpoint into a temporary directory and renames it when complete, so a run
killed mid-save leaves the previous checkpoints intact and the partial one is never listed.
Kept: the `keep` most recent plus the best by evaluation (`best_score`). A checkpoint of another
format (an older crl's, whose state had other leaves) is refused in one line: there is no
upgrade path before 1.0.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint.checkpoint_managers import preservation_policy

from crl.core.atomic import write_json
from crl.core.spec import PolicySpec
from crl.core.usage import ConfigError
from crl.train.config import TrainConfig

CHECKPOINTS = "checkpoints"
# The layout of a checkpoint's training state and metadata; bumped when either changes.
CHECKPOINT_FORMAT = "crl-checkpoint/1"
CONFIG_FILE = "config.json"
SPEC_FILE = "spec.json"
# The checkpoint metric orbax keeps the best by (`best_score` of the training-range evaluation).
BEST_METRIC = "hold_score"
# `best_score`'s tie-break weight: below the smallest step of an at-the-end success rate while an
# evaluation has fewer than 1/TIE_BREAK episodes (`validate` caps eval_episodes below that).
TIE_BREAK = 1e-6


def best_score(evaluation: dict[str, Any]) -> float:
    """How a checkpoint ranks for deployment, from its evaluation under the training ranges: at
    the goal when the episode ends first (a robot must stay there, not pass through), time at
    goal breaking ties. Held-out results never rank a checkpoint: they are what a deployment is
    tested against, so choosing by them would overstate it."""
    return float(evaluation["final_success_rate"]) + TIE_BREAK * float(
        evaluation["time_at_goal_fraction"])

# Orbax logs every save and restore through absl at INFO/WARNING; a run's console is ours.
logging.getLogger("absl").setLevel(logging.ERROR)


class CheckpointError(ValueError):
    """A run directory or checkpoint that is missing or unreadable (one-line message)."""


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
        evaluation: dict[str, Any],
    ) -> Path:
        """Checkpoint `step`: `state` and `params` (orbax), `meta` with the format added, ranked
        among the kept ones by `best_score` of `evaluation` (under the training ranges)."""
        meta = {**meta, "format": CHECKPOINT_FORMAT}
        self._manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(_to_saveable(state)),
                params=ocp.args.StandardSave(params),
                meta=ocp.args.JsonSave(meta),
            ),
            metrics={BEST_METRIC: best_score(evaluation)},
        )
        self._manager.wait_until_finished()
        return self.path(step)

    def restore_state(self, step: int, template: Any) -> Any:
        """The full training state at `step`, shaped like `template` (a freshly built state)."""
        check_format(_read_meta(self.path(step)), self.path(step))
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, _to_saveable(template))
        try:
            restored = self._manager.restore(
                step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract))
            )
        except (ValueError, KeyError, FileNotFoundError) as e:
            raise CheckpointError(
                f"{self.path(step)}: cannot restore the training state ({_first_line(e)}); "
                "was it written with a different config?"
            ) from None
        return _from_saveable(restored.state, template)

    def close(self) -> None:
        self._manager.close()


def check_format(meta: dict[str, Any], path: Path) -> None:
    """Raise CheckpointError unless `meta` (a checkpoint's) is of `CHECKPOINT_FORMAT`."""
    found = meta.get("format")
    if found != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{path}: a checkpoint of {'no format' if found is None else repr(found)}, from "
            f"another crl version (this one reads {CHECKPOINT_FORMAT!r}); train the run again "
            "with crl-train, or export it with the crl version that wrote it"
        )


def _read_meta(path: Path) -> dict[str, Any]:
    """A checkpoint's metadata (`path`: its folder), as JSON."""
    meta_file = path / "meta" / "metadata"
    try:
        meta = json.loads(meta_file.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{meta_file}: unreadable checkpoint metadata ({e})") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{meta_file}: unreadable checkpoint metadata (not an object)")
    return meta


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def prepare_run_dir(
    run_dir: Path, config: TrainConfig, resume: bool, write: bool = True
) -> TrainConfig:
    """Create a new run directory, or check that `--resume` matches the run it continues.

    Returns the config to run with: on resume, the stored one (only total_steps may change).
    `write=False` only checks (the processes of a multi-process run other than the first).
    """
    config_path = run_dir / CONFIG_FILE
    if resume:
        if not config_path.is_file():
            raise ConfigError(f"resume: {run_dir} holds no run to resume (no {CONFIG_FILE})")
        stored = TrainConfig.from_dict(json.loads(config_path.read_text()))
        differs = _differences(stored, dataclasses.replace(config, total_steps=stored.total_steps))
        if differs:
            name, was, now = differs[0]
            raise ConfigError(
                f"{name}: the run in {run_dir} was started with {was!r}, not {now!r}; to resume "
                f"it, set {name} back to {was!r} (drop or change its flag; a preset's defaults "
                "can change between versions; only --total-steps may change) or start a new --out"
            )
        config = dataclasses.replace(stored, total_steps=config.total_steps)
    elif checkpoint_steps(run_dir):
        # A config.json without checkpoints is a run that died before its first one (in setup
        # or compile): nothing to continue, so it starts again in place.
        raise ConfigError(
            f"out: {run_dir} already holds a run; pass --resume to continue it or choose "
            "another --out"
        )
    if write:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_json(config_path, config.to_dict(), sort_keys=True)
    return config


def _differences(a: Any, b: Any, prefix: str = "") -> list[tuple[str, Any, Any]]:
    out = []
    for f in dataclasses.fields(a):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if dataclasses.is_dataclass(x):
            out += _differences(x, y, prefix)
        elif x != y:
            out.append((prefix + f.name, x, y))
    return out


def checkpoint_steps(run_dir: Path) -> list[int]:
    """Steps of the complete checkpoints in a run (temporary, half-written ones excluded)."""
    directory = Path(run_dir) / CHECKPOINTS
    if not directory.is_dir():
        return []
    return sorted(int(p.name) for p in directory.iterdir() if p.is_dir() and p.name.isdigit())


def best_step(run_dir: Path) -> int:
    """The kept checkpoint with the best `best_score` (the one the trainer keeps beside the
    latest ones), so a deployment takes the policy of the run that best holds the goal."""
    scored: list[tuple[float, int]] = []
    for step in checkpoint_steps(run_dir):
        evaluation = _read_meta(Path(run_dir) / CHECKPOINTS / str(step)).get("evaluation") or {}
        with contextlib.suppress(KeyError, TypeError, ValueError):
            scored.append((best_score(evaluation["train"]), step))
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
    check_format(_read_meta(path), path)
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
