"""The install layout: what a robot installs runs without the training stack, ONNX Runtime comes
from exactly one extra, and a command whose extra is missing says which one in one line.

These run in both venvs: the workstation's (Python 3.11, every extra) and the robot's
(`make test-robot`: Python 3.10, the plain install with the cpu and test extras). Where the
training stack is installed, a subprocess hides it to see what a robot would see.
"""

from __future__ import annotations

import ast
import importlib.metadata
import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

REPO = Path(__file__).resolve().parents[1]
ORT = {"onnxruntime", "onnxruntime-gpu"}
# What only training and simulation need: a robot's process must never load any of it.
TRAINING = ("jax", "jaxlib", "flax", "optax", "orbax", "mujoco.mjx", "tensorboardX",
            "crl.train", "crl.sim.env", "crl.sim.config", "crl.sim.tasks", "crl.sim.render")
# Python 3.10's newest releases, which the robot's install must admit (measured in its venv).
PY310_RELEASES = {"numpy": "2.2.6", "onnx": "1.23.2", "onnxruntime": "1.23.2",
                  "mujoco": "3.17.0", "pyzmq": "27.3.0", "msgpack": "1.2.4", "pyyaml": "6.0.4",
                  "tyro": "1.0.17"}
ROBOT_PACKAGES = {"numpy", "onnx", "mujoco", "pyzmq", "msgpack", "pyyaml", "tyro"}
# The numpy 1.x a robot's ROS is built against (Ubuntu 24.04's, JetPack 6 containers pin < 2):
# the robot's install must admit it (`make test-robot` tests it); only training needs 2.x.
ROBOT_NUMPY1 = "1.26.4"
PYTHON = f"{sys.version_info[0]}.{sys.version_info[1]}"
COMBINED = ("train", "train-gpu", "test", "dev")  # extras installed beside cpu or gpu
# Each package's command line owns its console script.
SCRIPTS = {"crl-sim": "crl.sim.cli:crl_sim", "crl-train": "crl.train.cli:crl_train",
           "crl-export": "crl.export.cli:crl_export", "crl-run": "crl.runtime.cli:crl_run"}

# Makes the named top-level packages look uninstalled in a subprocess: an import of one fails
# as it would there, and importlib.util.find_spec finds nothing. Prepended to its code.
HIDE = """
import importlib.abc, importlib.util, sys
class _Hide(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in HIDDEN:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None
sys.meta_path.insert(0, _Hide())
_find_spec = importlib.util.find_spec
importlib.util.find_spec = lambda name, package=None: (
    None if name.split(".")[0] in HIDDEN else _find_spec(name, package))
"""

# Imports every module a robot uses, reads a policy's seal, loads it and benchmarks it, then
# lists which training modules the process holds.
ROBOT_PROCESS = """
import importlib, json, pkgutil, sys, tempfile
from pathlib import Path

import crl.runtime

for extra in EXTRA:
    importlib.import_module(extra)
runtime = sorted(m.name for m in pkgutil.iter_modules(crl.runtime.__path__))
for name in runtime:
    importlib.import_module("crl.runtime." + name)
for name in ("crl.core.spec", "crl.core.policy_file", "crl.core.engine_file",
             "crl.export.onnx_export", "crl.export.tensorrt_build", "crl.export.cli"):
    importlib.import_module(name)

from crl.export.onnx_export import export_actor, random_params
from crl.runtime.bench import run_bench
from crl.runtime.onnx_file import read_spec
from crl.runtime.policy import load_policy
from crl.core.spec import ActionSpec, Field, GoalSpec, NetworkSpec, PolicySpec, Provenance

spec = PolicySpec(
    task="toy", observation=(Field("joint_pos", 3),),
    goal=GoalSpec((Field("xy", 2),), "world", (-1.0, -1.0), (1.0, 1.0)),
    action=ActionSpec(1, ("j0",), "position", (1.0,), (0.0,), (-1.0,), (1.0,)),
    control_hz=50.0, success_radius=0.05, provenance=Provenance("toy", "0" * 64),
    network=NetworkSpec(4, 16, 8))
tmp = Path(tempfile.mkdtemp())
export_actor(random_params(spec, critic=False), spec, tmp / "p.onnx")
assert read_spec(tmp / "p.onnx") == spec
if importlib.util.find_spec("onnxruntime") is not None:
    policy = load_policy(tmp / "p.onnx")
    assert policy.act([0.0] * 3, [0.0] * 2).shape == (1,)
    run_bench(tmp / "p.onnx", "ort", (1,), 5, tmp / "r.json")
loaded = sorted(m for m in sys.modules if any(m == t or m.startswith(t + ".") for t in TRAINING))
print(json.dumps({"runtime": runtime, "training": loaded}))
"""


def _python(code: str, *, hidden: tuple[str, ...] = (), argv: tuple[str, ...] = (),
            cwd: Path | None = None, **names: object) -> subprocess.CompletedProcess[str]:
    """Run `code` in a fresh interpreter of this venv, `hidden` packages made unimportable and
    `names` bound as constants first."""
    prelude = "".join(f"{k} = {v!r}\n" for k, v in names.items())
    if hidden:
        prelude = f"HIDDEN = {hidden!r}\n{HIDE}\n{prelude}"
    return subprocess.run([sys.executable, "-c", prelude + code, *argv],
                          capture_output=True, text=True, timeout=300, cwd=cwd)


def _robot_process(*extra: str) -> dict[str, list[str]]:
    """ROBOT_PROCESS's findings, `extra` modules imported first."""
    r = _python(ROBOT_PROCESS, EXTRA=extra, TRAINING=TRAINING)
    assert r.returncode == 0, r.stderr
    result: dict[str, list[str]] = json.loads(r.stdout.strip().splitlines()[-1])
    return result


def test_robot_modules_load_no_training_stack() -> None:
    """Every runtime module, the spec, the seal check, ONNX Runtime and the bench, in a fresh
    process: none of jax, flax, orbax, MJX or crl.train is loaded (in this venv's conftest jax
    may be, hence the subprocess)."""
    result = _robot_process()
    assert result["training"] == []
    assert {"policy", "backend", "ort_backend", "trt_backend", "bench", "cli"
            } <= set(result["runtime"])


def test_the_import_check_can_fail(tmp_path: Path) -> None:
    """The check above catches a process that imports the training stack: with the real one
    where it is installed, and everywhere with a stand-in `jax` package."""
    if importlib.util.find_spec("jax") is not None:
        loaded = _robot_process("crl.train.networks")["training"]
        assert {"jax", "flax", "crl.train", "crl.train.networks"} <= set(loaded)
    (tmp_path / "jax").mkdir()
    (tmp_path / "jax" / "__init__.py").write_text("")
    r = _python(f"import sys; sys.path.insert(0, {str(tmp_path)!r})\n" + ROBOT_PROCESS,
                EXTRA=("jax",), TRAINING=TRAINING)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout.strip().splitlines()[-1])["training"] == ["jax"]


# Imports MODULE in a fresh process and lists which of the third-party training packages it holds.
STACK_AFTER_IMPORT = """
import importlib, json, sys
importlib.import_module(MODULE)
print(json.dumps(sorted(m for m in sys.modules
                        if any(m == t or m.startswith(t + ".") for t in STACK))))
"""
# The training stack's third-party packages (TRAINING's, less crl's own modules).
THIRD_PARTY_TRAINING = tuple(t for t in TRAINING if not t.startswith("crl."))


def _stack_after_import(module: str) -> list[str]:
    r = _python(STACK_AFTER_IMPORT, MODULE=module, STACK=THIRD_PARTY_TRAINING)
    assert r.returncode == 0, r.stderr
    loaded: list[str] = json.loads(r.stdout.strip().splitlines()[-1])
    return loaded


@pytest.mark.parametrize("module", ["crl.sim.config", "crl.train.config"])
def test_configs_load_no_training_stack(module: str) -> None:
    """A config is a plain description: reading, validating and writing one needs neither jax
    nor flax (the goal samplers draw in crl.sim.sampling, the networks build in
    crl.train.networks)."""
    assert _stack_after_import(module) == []


def test_the_config_import_check_can_fail() -> None:
    """The check above sees jax and flax in a process that imports the networks."""
    if importlib.util.find_spec("flax") is None:
        pytest.skip("no training stack installed here to be loaded")
    assert {"jax", "flax"} <= set(_stack_after_import("crl.train.networks"))


def _pyproject(root: Path = REPO) -> dict[str, Any]:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10: tomli, from the test extra
        tomllib = pytest.importorskip("tomli", reason="no TOML reader on this Python")
    with open(root / "pyproject.toml", "rb") as f:
        data: dict[str, Any] = tomllib.load(f)
    return data


def _expand(requirements: list[Requirement], extras: dict[str, list[Requirement]]
            ) -> list[Requirement]:
    """Requirements with crl's own extras (`crl[test]`) replaced by what those list."""
    out = []
    for req in requirements:
        if req.name == "crl":
            for extra in sorted(req.extras):
                out += _expand(extras[extra], extras)
        else:
            out.append(req)
    return out


def _on(req: Requirement, extra: str, python: str) -> bool:
    """Whether `req` is installed with `extra` on Python `python`."""
    return req.marker is None or req.marker.evaluate({"extra": extra, "python_version": python})


def _layout_holds(base: list[Requirement], extras: dict[str, list[Requirement]]) -> None:
    """The install layout's rules, over the requirements of pyproject or the installed metadata."""
    plain = {r.name.lower() for r in base}
    assert not plain & ORT, f"the plain install requires {plain & ORT}: ONNX Runtime is an extra"
    assert not plain & {"jax", "flax", "optax", "orbax-checkpoint", "mujoco-mjx", "tensorrt"}
    assert plain >= ROBOT_PACKAGES, ROBOT_PACKAGES - plain
    names = {e: {r.name.lower() for r in _expand(reqs, extras)} for e, reqs in extras.items()}
    assert names["cpu"] & ORT == {"onnxruntime"}
    assert names["gpu"] & ORT == {"onnxruntime-gpu"}
    assert {"tensorrt", "cuda-python"} <= names["gpu"]
    for extra in COMBINED:
        assert not names[extra] & ORT, f"extra {extra!r} brings {names[extra] & ORT}"
    # training needs Python ≥ 3.11 (jax 0.10's floor): on 3.10 its extras install nothing
    for extra in ("train", "train-gpu"):
        for req in _expand(extras[extra], extras):
            assert _on(req, extra, "3.11") and not _on(req, extra, "3.10"), f"{extra}: {req}"
    assert not names["test"] & {"jax", "flax"} and {"pytest", "hypothesis"} <= names["dev"]


def test_pyproject_layout() -> None:
    project = _pyproject()["project"]
    python = SpecifierSet(project["requires-python"])
    assert all(v in python for v in ("3.10", "3.11", "3.12", "3.13")) and "3.14" not in python
    base = [Requirement(r) for r in project["dependencies"]]
    extras = {e: [Requirement(r) for r in reqs]
              for e, reqs in project["optional-dependencies"].items()}
    _layout_holds(base, extras)
    for req in [*base, *extras["cpu"]]:  # bounds wide enough for Python 3.10's newest releases
        if req.name.lower() in PY310_RELEASES:
            assert PY310_RELEASES[req.name.lower()] in req.specifier, req
    numpy = next(r for r in base if r.name == "numpy")
    assert ROBOT_NUMPY1 in numpy.specifier, f"the robot's install refuses numpy {ROBOT_NUMPY1}"
    assert project["scripts"] == SCRIPTS


def test_installed_metadata_and_environment() -> None:
    """What pip installed here follows the layout too (make rebuilds a venv when pyproject
    changes), and this environment never holds both ONNX Runtime packages."""
    names = importlib.metadata.metadata("crl").get_all("Provides-Extra") or []
    base: list[Requirement] = []
    extras: dict[str, list[Requirement]] = {e: [] for e in names}
    for req in map(Requirement, importlib.metadata.requires("crl") or []):
        # the first that installs it on some Python: "" is the plain install
        extra = next(e for e in ("", *names) if any(_on(req, e, v) for v in ("3.10", "3.13")))
        (extras[extra] if extra else base).append(req)
    _layout_holds(base, extras)
    installed = {d.metadata["Name"].lower() for d in importlib.metadata.distributions()}
    assert len(installed & ORT) <= 1, f"both {sorted(installed & ORT)} installed"
    for dist in importlib.metadata.distributions():  # nothing else brings one in by itself
        if dist.metadata["Name"].lower() == "crl":
            continue
        for req in map(Requirement, dist.requires or []):
            if req.name.lower() in ORT and _on(req, "", PYTHON):
                pytest.fail(f"{dist.metadata['Name']} requires {req}")
    scripts = {e.name: e.value for e in importlib.metadata.entry_points(group="console_scripts")}
    assert scripts.get("crl-train") == SCRIPTS["crl-train"]


@pytest.mark.skipif(sys.version_info >= (3, 11), reason="the robot's Python 3.10 venv only")
def test_robot_venv_has_no_training_stack() -> None:
    """On Python 3.10 the train extra's markers leave jax out; the plain install is complete."""
    for module in ("jax", "flax", "optax", "orbax", "tensorboardX"):
        assert importlib.util.find_spec(module) is None, module
    for module in ("numpy", "onnx", "onnxruntime", "mujoco", "zmq", "msgpack", "yaml", "tyro"):
        assert importlib.util.find_spec(module) is not None, module


# (console script, argv, packages hidden, exit status, what its one line says)
MISSING = [
    ("crl_train", ["reacher"], ("jax",), 2, "crl-train: needs the train extra: pip install "
     "'crl[train]'"),
    ("crl_sim", ["info", "reacher"], ("jax",), 2, "crl-sim: needs the train extra"),
    ("crl_export", ["onnx", "--run", "runs/x", "--out", "x.onnx"], ("jax", "orbax"), 2,
     "crl-export: needs the train extra"),
    ("crl_run", ["bench", "--policy", "p.onnx", "--out", "r.json"], ("onnxruntime",), 2,
     "ONNX Runtime is not installed: pip install 'crl[cpu]', or 'crl[gpu]'"),
    ("crl_run", ["bench", "--policy", "runs/x", "--backend", "jax", "--out", "r.json"],
     ("jax",), 2, "backend 'jax': needs the train extra"),
    ("crl_run", ["bench", "--policy", "p.onnx", "--out", "r.json", "--plot", "l.png"],
     ("matplotlib",), 2, "--plot l.png: needs matplotlib"),
]


@pytest.mark.parametrize(("script", "argv", "hidden", "status", "says"), MISSING,
                         ids=[f"{m[0]}-{m[2][0]}" for m in MISSING])
def test_a_missing_extra_is_one_line(tmp_path: Path, script: str, argv: list[str],
                                     hidden: tuple[str, ...], status: int, says: str) -> None:
    (tmp_path / "runs" / "x").mkdir(parents=True)
    module, _, function = SCRIPTS[script.replace("_", "-")].partition(":")
    code = (f"import sys; sys.argv[0] = {script.replace('_', '-')!r}\n"
            f"from {module} import {function}\nsys.exit({function}())\n")
    r = _python(code, hidden=hidden, argv=tuple(argv), cwd=tmp_path)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == status and len(lines) == 1 and says in lines[0], r.stderr
    assert not (tmp_path / "r.json").exists() and not (tmp_path / "x.onnx").exists()
    if script == "crl_train" and sys.version_info < (3, 11):
        assert "needs Python ≥ 3.11 (jax); this is Python 3.10" in lines[0]


def test_crl_train_script_on_this_python() -> None:
    """The installed `crl-train` itself: without the train extra (the robot's venv) its one
    line, exit 2; with it, its help."""
    script = Path(sys.executable).with_name("crl-train")
    if not script.exists():
        pytest.skip(f"{script} is not installed (not an installed venv)")
    r = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=300)
    if importlib.util.find_spec("jax") is None:
        assert r.returncode == 2 and r.stderr.startswith("crl-train: needs the train extra")
    else:
        assert r.returncode == 0 and "usage" in r.stdout.lower()


# The floors, lowest first: a module may import its own floor and those below it, never one
# above (pyproject's package-dir lists them in this order), and what a robot installs never
# imports the training stage.
FLOORS = ("crl.core", "crl.sim", "crl.train", "crl.export", "crl.runtime", "crl.testbed")
NEVER = {"crl.runtime": ("crl.train",)}


def _floor(module: str) -> str | None:
    return next((f for f in FLOORS if module == f or module.startswith(f + ".")), None)


def _imports(path: Path, package: str) -> list[tuple[int, str]]:
    """Every crl module `path` imports, wherever the import statement is (a function's too)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolved against the module's package
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                found.append((node.lineno, f"{base}.{node.module}" if node.module else base))
            elif node.module:
                found += [(node.lineno, f"{node.module}.{a.name}") for a in node.names]
    return [(line, name) for line, name in found if _floor(name) is not None]


def floor_violations(root: Path = REPO) -> list[str]:
    """`file:line: floor imports module` for each import of a higher floor (or a forbidden one)."""
    folders: dict[str, str] = _pyproject(root)["tool"]["setuptools"]["package-dir"]
    assert tuple(folders) == FLOORS, f"package-dir's floors {tuple(folders)} != {FLOORS}"
    bad = []
    for floor, folder in folders.items():
        for path in sorted((root / folder).rglob("*.py")):
            package = ".".join((floor, *path.relative_to(root / folder).parent.parts))
            for line, name in _imports(path, package):
                target = _floor(name)
                assert target is not None
                if FLOORS.index(target) > FLOORS.index(floor) or target in NEVER.get(floor, ()):
                    bad.append(f"{path.relative_to(root)}:{line}: {floor} imports {name}")
    return bad


def test_no_floor_imports_a_floor_above() -> None:
    """core < sim < train < export < runtime < testbed, by every import statement in the tree,
    lazy ones inside functions included; the runtime imports no crl.train at all."""
    assert floor_violations() == []


def test_the_floor_check_can_fail(tmp_path: Path) -> None:
    """The check above sees an upward import, even one inside a function, and a relative one."""
    folders: dict[str, str] = _pyproject()["tool"]["setuptools"]["package-dir"]
    for folder in folders.values():
        (tmp_path / folder).mkdir()
    (tmp_path / "pyproject.toml").write_bytes((REPO / "pyproject.toml").read_bytes())
    (tmp_path / "core" / "a.py").write_text("def f():\n    import crl.sim.env\n")
    (tmp_path / "runtime" / "b.py").write_text("from crl.train import config\n")
    (tmp_path / "sim" / "c.py").write_text("from crl.core import spec\nfrom . import env\n")
    (tmp_path / "export" / "d.py").write_text("from crl.runtime.policy import load_policy\n")
    assert floor_violations(tmp_path) == [
        "core/a.py:2: crl.core imports crl.sim.env",
        "export/d.py:1: crl.export imports crl.runtime.policy.load_policy",
        "runtime/b.py:1: crl.runtime imports crl.train.config",
    ]
