"""Read a policy ONNX file and verify what it says about itself before anything runs it.

The checks (the seal over the whole file: graph, weights and spec; then the spec and the graph's
inputs/outputs against each other) live with the format itself, `crl.core.policy_file`, which
the exporter writes; this module turns their failures into `PolicyError`s for the runtime.
onnx only, no onnxruntime, no jax.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from crl.core.policy_file import PolicyFileError, Sealed, load_model, read_seal
from crl.core.spec import PolicySpec
from crl.runtime.backend import PolicyError


@dataclass(frozen=True)
class PolicyFile:
    """A verified policy file: its bytes (for the inference session) and its seal."""

    path: Path
    model_bytes: bytes
    seal: Sealed

    @property
    def spec(self) -> PolicySpec:
        return self.seal.spec


def read_policy_file(path: str | Path) -> PolicyFile:
    """Load and verify; a missing file, a file that is not ONNX, one without our spec or seal
    (exported before files were sealed whole), any edit after export (the message names the
    part: weights, spec or graph) or an unknown spec format is a one-line `PolicyError`."""
    path = Path(path)
    try:
        data, model = load_model(path)
        seal = read_seal(model, str(path))
    except PolicyFileError as e:
        raise PolicyError(str(e)) from None
    return PolicyFile(path, data, seal)


def read_spec(path: str | Path) -> PolicySpec:
    """The verified spec of a policy file (what a robot checks its configuration against)."""
    return read_policy_file(path).spec
