#!/usr/bin/env bash
# The first lent GPU's run (issue 27): every GPU figure the docs lack, from one command that
# fits one H100 lease of 12 minutes, the machine's start included (the script: 9 minutes).
#
#   bash bench/gpu.sh                  # on the GPU machine: JSON in bench/results/gpu-<date>/
#   bash bench/gpu.sh --out DIR        # ... in DIR
#   bash bench/gpu.sh --smoke          # the same steps at toy sizes on any machine (CI, < 2 min)
#   bash bench/gpu.sh --only depth_sweep --budget 540   # one step again, with the whole budget
#
# The steps, in order, each under its own time limit (`timeout`), each writing one JSON:
#   setup                  a Python with crl, MuJoCo/MJX and jax (installed from .whl/ when the
#                          machine lacks them); setup.json: versions, jax's devices, TensorRT,
#                          ONNX Runtime's providers, warp
#   train_throughput_d64   bench/train_throughput.py --depths 64 --dtypes fp32 bf16 (ant, the
#   train_throughput_d256  paper's sizes), and the same at depth 256
#   sim_throughput         bench/sim_throughput.py --physics jax warp; where warp refuses (not
#                          installed), sim_throughput_jax measures jax alone
#   export_onnx            a depth-64 actor (random weights), fp32 and fp16 ONNX
#   tensorrt_fp32/_fp16    crl-export tensorrt on each (the engine's sidecar JSON)
#   policy_latency_gpu     bench/policy_latency_gpu.py: JAX, ONNX Runtime CUDA and TensorRT EPs,
#                          native TensorRT fp32/fp16 at batch 1, 64 and 1024
#   depth_sweep            bench/depth_sweep.py paper_ant --depths 4,64, as many env steps as
#                          the time left holds (estimated from train_throughput_d64's rate);
#                          depth_sweep/: sweep.json, sweep.png, each run's evaluations
#
# A step that cannot run here (no TensorRT, no warp: the script's one-line refusal, exit 2) is
# `unavailable`; one the script does not start (no time left, setup failed) `skipped`; both are
# recorded with the reason in the step's JSON, and the script goes on. `failed`, `crashed`
# (a traceback) and `timeout` are errors: the script still goes on, and exits 1 at the end.
# summary.json lists every step: status, wall time, output file, reason, logs (logs/).
#
# On a GPU machine without a package index (docs/benchmarks.md, "The GPU run"): fetch the
# wheels here with ../shared/device-wheels.sh (with the extra names that section gives), carry
# .whl/, and this script installs them and the repository into a venv over the machine's Python.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

# Time limits (s). GPU: guesses for an H100 until the first run measures them; the budget leaves
# a 600 s device command a minute for the tar and the copy back.
GPU_BUDGET_S=540
SMOKE_BUDGET_S=240         # a cap for a hang: the smoke run takes about 80 s of CPU time
MIN_STEP_S=15              # a step is not started with less than this left
SWEEP_RUN_OVERHEAD_S=75    # per crl-train run of the sweep: start, compiles, evaluations, saves
SWEEP_MIN_TRAIN_S=20       # below this much training time left, the sweep is skipped
SWEEP_DEFAULT_RATE=5000    # env steps/s assumed when train_throughput_d64 measured none
# Toy sizes for --smoke: XLA:CPU's optimizations off (the smoke run checks the plumbing, not
# the figures; it halves the compiles, which are most of its time).
SMOKE_XLA_FLAGS="--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"

# Every step's name, for --only (the smoke run's training step is train_throughput_d4).
STEPS=(setup train_throughput_d4 train_throughput_d64 train_throughput_d256 sim_throughput
  sim_throughput_jax export_onnx tensorrt_fp32 tensorrt_fp16 policy_latency_gpu depth_sweep)

MODE=gpu
OUT_DIR=""
BUDGET_S=""
ONLY=""
PY_ARG=""
WHEELS="$ROOT/.whl"
SWEEP_TASK=paper_ant
SWEEP_STEPS=""
KEEP_WORK=0

usage() {
  sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d' | sed 's/^# \{0,1\}//'
  cat <<EOF
Options:
  --smoke            toy sizes, any machine; results in a temporary folder unless --out
  --out DIR          results folder (default: bench/results/gpu-<UTC date and time>/)
  --budget S         seconds for the whole run (default: $GPU_BUDGET_S; --smoke $SMOKE_BUDGET_S)
  --only A,B         run only these steps (setup always runs), of:
$(echo "${STEPS[*]}" | fold -s -w 72 | sed 's/^/                       /')
  --python PY        the Python to use (default: .venv/bin/python if there, else python3)
  --wheels DIR       wheels to install when the Python lacks MuJoCo/MJX (default: .whl/)
  --sweep-task T     the depth sweep's task (default: $SWEEP_TASK)
  --sweep-steps N    the depth sweep's env steps per run (default: from the time left)
  --keep-work        keep the scratch folder (ONNX files, engines) and the sweep's checkpoints
EOF
}

die_usage() {
  echo "gpu.sh: $1 (see --help)" >&2
  exit 2
}

parse_args() {
  while (($#)); do
    case $1 in
      --smoke) MODE=smoke ;;
      --out) (($# > 1)) || die_usage "--out needs a folder"; OUT_DIR=$2; shift ;;
      --budget) (($# > 1)) || die_usage "--budget needs seconds"; BUDGET_S=$2; shift ;;
      --only) (($# > 1)) || die_usage "--only needs step names"; ONLY=$2; shift ;;
      --python) (($# > 1)) || die_usage "--python needs a path"; PY_ARG=$2; shift ;;
      --wheels) (($# > 1)) || die_usage "--wheels needs a folder"; WHEELS=$2; shift ;;
      --sweep-task) (($# > 1)) || die_usage "--sweep-task needs a task"; SWEEP_TASK=$2; shift ;;
      --sweep-steps) (($# > 1)) || die_usage "--sweep-steps needs a number"; SWEEP_STEPS=$2
        shift ;;
      --keep-work) KEEP_WORK=1 ;;
      -h | --help) usage; exit 0 ;;
      *) die_usage "unknown argument: $1" ;;
    esac
    shift
  done
  [[ -z $BUDGET_S || $BUDGET_S =~ ^[0-9]+$ ]] || die_usage "--budget: whole seconds, got $BUDGET_S"
  [[ -z $SWEEP_STEPS || $SWEEP_STEPS =~ ^[0-9]+$ ]] \
    || die_usage "--sweep-steps: a whole number, got $SWEEP_STEPS"
  local name names=()
  IFS=, read -ra names <<<"$ONLY"
  for name in "${names[@]}"; do
    [[ " ${STEPS[*]} " == *" $name "* ]] || die_usage "--only: no step $name"
  done
  return 0
}

# The bookkeeping (step records, the summary, the sweep's plan), in Python's standard library
# only, so that any python3 runs it. Written to the scratch folder by init_run.
HELPER=$(cat <<'PYEOF'
import datetime, json, os, re, sys, time
from pathlib import Path

OUT = Path(os.environ["GPU_OUT"])
STEPS = Path(os.environ["GPU_WORK"]) / "steps.jsonl"
ERRORS = ("failed", "crashed", "timeout")
# A command line the script itself got wrong (argparse or tyro): never "unavailable".
USAGE = re.compile(r"usage:|unrecognized arguments|Unrecognized options|Missing from|"
                   r"For full helptext|invalid choice")


def now():
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def rel(path):
    try:
        return str(Path(path).resolve().relative_to(OUT.resolve()))
    except ValueError:
        return str(path)


def read_json(path):
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def text(path):
    try:
        return Path(path).read_text(errors="replace")
    except OSError:
        return ""


def write_json(path, data):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)


def classify(rc, wall, limit, stderr, output):
    lines = [l.strip() for l in stderr.splitlines() if l.strip()]
    last = lines[-1] if lines else ""
    if rc == 0:
        if read_json(output) is None:
            return "failed", f"exited 0 but wrote no JSON at {rel(output)}"
        return "ok", ""
    if rc in (124, 137) and wall >= limit - 1:
        return "timeout", f"stopped at its time limit ({limit} s)"
    if "Traceback (most recent call last)" in stderr:
        return "crashed", last
    if rc == 2 and not USAGE.search(stderr):
        return "unavailable", last
    return "failed", last or f"exit status {rc}"


def record(entry):
    with STEPS.open("a") as f:
        f.write(json.dumps(entry) + "\n")
    summary()


def summary():
    steps = [json.loads(l) for l in STEPS.read_text().splitlines() if l.strip()]
    # A run of some steps again (--only) into the same folder keeps the others' entries.
    earlier = (read_json(STEPS.with_name("earlier_summary.json")) or {}).get("steps", [])
    names = {s["name"] for s in steps}
    steps = [dict(s, earlier_run=True) for s in earlier if s["name"] not in names] + steps
    counts = {}
    for s in steps:
        counts[s["status"]] = counts.get(s["status"], 0) + 1
    start = float(os.environ["GPU_START"])
    write_json(OUT / "summary.json", {
        "benchmark": "gpu_run",
        "mode": os.environ["GPU_MODE"],
        "started": datetime.datetime.fromtimestamp(start, datetime.timezone.utc)
                   .isoformat(timespec="seconds"),
        "updated": now(),
        "wall_s": round(time.time() - start, 1),
        "budget_s": int(os.environ["GPU_BUDGET"]),
        "python": os.environ.get("GPU_PY", ""),
        "out": str(OUT),
        "ok": not any(s["status"] in ERRORS for s in steps),
        "counts": counts,
        "steps": steps,
    })


def cmd_step(name, rc, t0, t1, limit, output, out_log, err_log, *command):
    rc, limit, wall = int(rc), int(limit), float(t1) - float(t0)
    stderr = text(err_log)
    status, reason = classify(rc, wall, limit, stderr, output)
    entry = {"name": name, "status": status, "wall_s": round(wall, 1), "limit_s": limit,
             "rc": rc, "output": rel(output), "reason": reason,
             "logs": [rel(out_log), rel(err_log)], "command": list(command)}
    if status != "ok" and read_json(output) is None:
        # The step's record in place of its JSON; rows it printed before it stopped are kept.
        rows = []
        for line in text(out_log).splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if isinstance(row, dict):
                rows.append(row)
        write_json(output, {"benchmark": name, "status": status, "reason": reason, "rc": rc,
                            "wall_s": entry["wall_s"], "date": now(), "command": list(command),
                            "stderr_tail": [l for l in stderr.splitlines() if l.strip()][-12:],
                            "stdout_json": rows})
    elif status != "ok":
        entry["partial"] = True  # it wrote some of its JSON before it stopped
    record(entry)
    print(status, reason.replace("\n", " "))


def cmd_mark(name, status, wall, output, reason):
    """A step the script decided on itself (skipped, or setup's own outcome)."""
    if status == "skipped" or read_json(output) is None:
        write_json(output, {"benchmark": name, "status": status, "reason": reason,
                            "date": now()})
    record({"name": name, "status": status, "wall_s": round(float(wall), 1), "limit_s": None,
            "rc": None, "output": rel(output), "reason": reason, "logs": [], "command": []})


def cmd_sweep_plan(left, overhead, min_train, default_rate, iteration, prefill):
    """Env steps per run and evaluation interval for two runs (depth 4, then 64) in `left` s.
    Depth 4 trains faster than 64, but not for free: the plan gives the two runs 1.5x the time
    depth 64 alone would need."""
    left, overhead, min_train = float(left), float(overhead), float(min_train)
    iteration, prefill = int(iteration), int(prefill)
    rate, collect, source = float(default_rate), 10 * float(default_rate), "assumed"
    data = read_json(OUT / "train_throughput_d64.json") or {}
    for row in data.get("results") or data.get("stdout_json") or []:
        if row.get("depth") == 64 and row.get("dtype") == "fp32":
            rate, collect = row["env_steps_per_s"], row["collect_env_steps_per_s"]
            source = "train_throughput_d64.json"
    train_s = left - 2 * overhead - 2 * prefill / collect
    if train_s < min_train:
        print(f"0 0 {left:.0f} s left: two runs need {2 * overhead + 2 * prefill / collect:.0f} s"
              f" of start-up, compiles and prefill and {min_train:.0f} s of training")
        return
    steps = prefill + int(rate * train_s / 1.5)
    steps = max(iteration, steps // iteration * iteration)
    every = max(iteration, (steps // 4) // iteration * iteration)
    print(f"{steps} {every} {rate:,.0f} env steps/s at depth 64 ({source}), "
          f"{train_s:.0f} s of training")


if __name__ == "__main__":
    {"step": cmd_step, "mark": cmd_mark, "summary": summary,
     "sweep-plan": cmd_sweep_plan}[sys.argv[1]](*sys.argv[2:])
PYEOF
)

# What the chosen Python has and what the machine is: written to setup.json; exit status 0 when
# every step's imports and commands are there (3 otherwise), and in the GPU mode jax sees a GPU.
PROBE=$(cat <<'PYEOF'
import importlib, importlib.metadata as md, json, os, platform, shutil, subprocess, sys
from pathlib import Path

out, mode = Path(sys.argv[1]), sys.argv[2]
modules = ["numpy", "jax", "flax", "optax", "orbax.checkpoint", "mujoco", "mujoco.mjx", "tyro",
           "onnx", "onnxruntime", "yaml", "msgpack", "tensorboardX", "matplotlib", "rich",
           "crl.train.agent", "crl.export.onnx_export", "crl.runtime.bench"]
missing = {}
for m in modules:
    try:
        importlib.import_module(m)
    except Exception as e:  # noqa: BLE001 - any failure to import is what we report
        missing[m] = f"{type(e).__name__}: {e}"
bindir = Path(sys.executable).parent
commands = {c: (bindir / c).is_file() for c in ("crl-train", "crl-export")}
versions = {}
for dist in ("crl", "numpy", "jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "mujoco",
             "mujoco-mjx", "warp-lang", "onnx", "onnxruntime", "onnxruntime-gpu", "tensorrt",
             "cuda-python", "tyro", "torch"):
    try:
        versions[dist] = md.version(dist)
    except md.PackageNotFoundError:
        versions[dist] = None
info = {"benchmark": "setup", "python": platform.python_version(), "executable": sys.executable,
        "machine": platform.machine(), "cpu_cores": os.cpu_count(), "versions": versions,
        "missing": missing, "commands": commands}
if shutil.which("nvidia-smi"):
    r = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                        "--format=csv,noheader"], capture_output=True, text=True)
    info["nvidia_smi"] = r.stdout.strip() or r.stderr.strip()
backend = None
if "jax" not in missing:
    import jax
    try:
        backend = jax.default_backend()
        info["jax"] = {"backend": backend, "devices": [str(d) for d in jax.devices()]}
    except Exception as e:  # noqa: BLE001
        info["jax"] = {"error": f"{type(e).__name__}: {e}"}
if "onnxruntime" not in missing:
    import onnxruntime
    info["onnxruntime_providers"] = onnxruntime.get_available_providers()
if "crl.train.agent" not in missing:
    from crl.core.engine_file import tensorrt_missing
    info["tensorrt"] = tensorrt_missing() or "available"
    if backend is not None:
        from crl.core.usage import ConfigError
        from crl.sim.physics import check_physics
        try:
            check_physics("warp")
            info["warp"] = "available"
        except ConfigError as e:
            info["warp"] = str(e)
core = ("jax", "mujoco.mjx", "tyro", "crl.train.agent", "crl.export.onnx_export")
problems = [f"cannot import {m} ({missing[m]})" for m in core if m in missing]
problems += [f"no {c} beside {sys.executable}" for c, there in commands.items() if not there]
if mode == "gpu" and not problems and backend != "gpu":
    problems.append(f"jax sees no GPU (backend {backend!r}); on a CPU, bash bench/gpu.sh --smoke")
info["problems"] = problems
out.write_text(json.dumps(info, indent=2) + "\n")
print("; ".join(problems) if problems else
      f"python {info['python']}, jax {versions['jax']} on {backend}, mujoco {versions['mujoco']}")
sys.exit(3 if problems else 0)
PYEOF
)

# A depth-64 actor (the ant's sizes, as bench/policy_latency.py) with random weights, fp32 and
# fp16, for crl-export tensorrt: argv depth, width, folder, the step's JSON.
EXPORT=$(cat <<'PYEOF'
import json, sys, time
from pathlib import Path

sys.path.insert(0, "bench")
from policy_latency import ActorShape, make_spec

from crl.core.atomic import write_json
from crl.export.onnx_export import export_actor, random_params

depth, width, folder, out = int(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3]), sys.argv[4]
spec = make_spec(ActorShape(depth=depth, width=width), depth)
params = random_params(spec, critic=False)
files = {}
for precision in ("fp32", "fp16"):
    t = time.perf_counter()
    r = export_actor(params, spec, folder / f"actor_{precision}.onnx", fp16=precision == "fp16")
    files[precision] = {"path": str(r.path), "bytes": r.path.stat().st_size,
                        "export_s": round(time.perf_counter() - t, 2), "sha256": r.sha256}
write_json(Path(out), {"benchmark": "export_onnx", "depth": depth, "width": width,
                       "obs_dim": spec.obs_dim, "act_dim": spec.act_dim, "files": files})
print(json.dumps(files))
PYEOF
)

# crl into the running venv without setuptools: crl/<stage> linked to the working tree's
# folders (tests/crl_link_tree.py, from pyproject's package-dir), a dist-info with pyproject's
# entry points (crl.core.plugins reads them), and the console scripts beside the python.
LINK_INSTALL=$(cat <<'PYEOF'
import sys, sysconfig, tomllib
from pathlib import Path

root = Path(sys.argv[1])
site, bindir = Path(sysconfig.get_paths()["purelib"]), Path(sys.executable).parent
sys.path.insert(0, str(root / "tests"))
from crl_link_tree import link_tree

link_tree(site, root)
project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
dist = site / f"crl-{project['version']}.dist-info"
dist.mkdir(exist_ok=True)
(dist / "METADATA").write_text(
    f"Metadata-Version: 2.1\nName: crl\nVersion: {project['version']}\n")
groups = {"console_scripts": project["scripts"], **project.get("entry-points", {})}
(dist / "entry_points.txt").write_text("".join(
    f"[{group}]\n" + "".join(f"{k} = {v}\n" for k, v in eps.items()) + "\n"
    for group, eps in groups.items()))
for name, target in project["scripts"].items():
    module, func = target.split(":")
    script = bindir / name
    script.write_text(f"#!{sys.executable}\nimport sys\nfrom {module} import {func}\n"
                      f"sys.exit({func}())\n")
    script.chmod(0o755)
print(f"linked crl into {site}; {', '.join(project['scripts'])} in {bindir}")
PYEOF
)

STEP_STATUS=""
ERRORS=0

book() {  # the bookkeeping helper
  "$BOOK_PY" "$WORK/helper.py" "$@"
}

now() {
  date +%s.%N
}

left_s() {
  echo $((BUDGET_S - SECONDS))
}

wanted() {  # whether --only (if given) names step $1
  [[ -z $ONLY || ",$ONLY," == *",$1,"* ]]
}

tally() {  # count an error status, print the step's line
  local name=$1 status=$2 detail=$3
  case $status in failed | crashed | timeout) ERRORS=$((ERRORS + 1)) ;; esac
  printf '[%4d s] %-22s %s%s\n' "$SECONDS" "$name" "$status" "${detail:+: $detail}"
}

skip_step() {  # name output reason
  book mark "$1" skipped 0 "$2" "$3" >/dev/null
  STEP_STATUS=skipped
  tally "$1" skipped "$3"
}

# run_step NAME LIMIT_S OUTPUT_JSON -- COMMAND...: the command under `timeout` (shortened to the
# budget's remainder), stdout and stderr to logs/, the status into summary.json.
run_step() {
  local name=$1 limit=$2 output=$3 left rc=0 t0 t1
  shift 4
  STEP_STATUS=""
  if [[ $STOP_REASON ]]; then
    skip_step "$name" "$output" "$STOP_REASON"
    return 0
  fi
  left=$(($(left_s) - 5))
  if ((left < MIN_STEP_S)); then
    skip_step "$name" "$output" "the time budget (${BUDGET_S} s) is spent"
    return 0
  fi
  ((limit <= left)) || limit=$left
  printf '[%4d s] %-22s running (limit %d s)\n' "$SECONDS" "$name" "$limit"
  t0=$(now)
  timeout --kill-after=10 "$limit" "$@" >"$LOGS/$name.stdout" 2>"$LOGS/$name.stderr" || rc=$?
  t1=$(now)
  local result detail
  result=$(book step "$name" "$rc" "$t0" "$t1" "$limit" "$output" \
    "$LOGS/$name.stdout" "$LOGS/$name.stderr" "$@")
  read -r STEP_STATUS detail <<<"$result"
  tally "$name" "$STEP_STATUS" "$detail"
  if [[ $STEP_STATUS == crashed || $STEP_STATUS == failed ]]; then
    grep -v '^[[:space:]]*$' "$LOGS/$name.stderr" | tail -n 8 | sed 's/^/      | /' || true
  fi
  return 0
}

init_run() {
  if [[ -z $BUDGET_S ]]; then
    if [[ $MODE == smoke ]]; then BUDGET_S=$SMOKE_BUDGET_S; else BUDGET_S=$GPU_BUDGET_S; fi
  fi
  if [[ -z $OUT_DIR ]]; then
    if [[ $MODE == smoke ]]; then
      OUT_DIR=$(mktemp -d "${TMPDIR:-/tmp}/crl-gpu-smoke.XXXXXX")
    else
      OUT_DIR="$ROOT/bench/results/gpu-$(date -u +%Y-%m-%d-%H%M)"
    fi
  fi
  mkdir -p "$OUT_DIR"
  OUT_DIR=$(cd "$OUT_DIR" && pwd)
  LOGS="$OUT_DIR/logs"
  mkdir -p "$LOGS"
  WORK=$(mktemp -d "${TMPDIR:-/tmp}/crl-gpu-work.XXXXXX")
  trap cleanup EXIT
  printf '%s\n' "$HELPER" >"$WORK/helper.py"
  : >"$WORK/steps.jsonl"
  if [[ -f $OUT_DIR/summary.json ]]; then
    cp "$OUT_DIR/summary.json" "$WORK/earlier_summary.json"
  fi
  BOOK_PY=python3
  if [[ -x $ROOT/.venv/bin/python ]]; then BOOK_PY="$ROOT/.venv/bin/python"; fi
  PY=""
  STOP_REASON=""
  export GPU_OUT="$OUT_DIR" GPU_WORK="$WORK" GPU_MODE="$MODE" GPU_BUDGET="$BUDGET_S"
  GPU_START=$(date +%s.%N)
  export GPU_START PYTHONUNBUFFERED=1
  if [[ $MODE == smoke ]]; then
    export XLA_FLAGS="${XLA_FLAGS:+$XLA_FLAGS }$SMOKE_XLA_FLAGS"
  fi
  echo "gpu.sh: $MODE run, budget ${BUDGET_S} s, results in $OUT_DIR"
}

cleanup() {
  if ((KEEP_WORK)); then
    echo "gpu.sh: scratch kept in $WORK"
  else
    rm -rf "$WORK"
  fi
}

# A venv over the base Python (its packages through a .pth file), with the wheels of $WHEELS
# and the repository installed into it, offline: then crl-train and crl-export sit beside its
# python, where bench/sweep.py looks for them.
make_overlay() {
  local base=$1 venv="$WORK/venv" site
  echo "setup: a venv over $base in $venv"
  # (Called where errexit is off: each command's failure returns.)
  timeout 120 "$base" -m venv --without-pip "$venv" || return
  site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])') \
    || return
  # Every path the base adds to the standard library's (its site-packages, its .pth files').
  "$base" -c 'import subprocess, sys
bare = subprocess.run([sys.executable, "-S", "-c", "import sys; print(*sys.path, sep=chr(10))"],
                      capture_output=True, text=True, check=True).stdout.splitlines()
print(*(p for p in sys.path if p and p not in bare), sep=chr(10))' \
    >"$site/_crl_gpu_base.pth" || return
  local wheels=()
  if [[ -d $WHEELS ]]; then
    mapfile -t wheels < <(find "$WHEELS" -maxdepth 1 -name '*.whl' | sort)
  fi
  if ((${#wheels[@]})); then
    echo "setup: installing ${#wheels[@]} wheels from $WHEELS"
    timeout 240 "$venv/bin/python" -m pip install -q --no-index --no-deps --no-compile \
      --no-cache-dir "${wheels[@]}" || return
  else
    echo "setup: no wheels in $WHEELS"
  fi
  echo "setup: installing $ROOT (editable, no index, the machine's setuptools)"
  if ! timeout 240 "$venv/bin/python" -m pip install -q --no-index --no-deps \
    --no-build-isolation --no-cache-dir -e "$ROOT"; then
    # pyproject needs setuptools >= 77 (an SPDX license string), which the machine may not
    # have, and no index brings one: the same layout without a build, as mypy's tree has it.
    echo "setup: pip could not build it; linking crl's folders into the venv instead"
    timeout 60 "$venv/bin/python" -c "$LINK_INSTALL" "$ROOT" || return
  fi
  PY="$venv/bin/python"
}

probe() {  # prints the probe's last line (MJX's import notes come before it)
  timeout 180 "$PY" -c "$PROBE" "$OUT_DIR/setup.json" "$MODE" | tail -n 1
}

run_setup() {
  local t0 t1 base status=ok reason="" rc=0
  t0=$(now)
  if [[ $PY_ARG ]]; then
    base=$PY_ARG
  elif [[ -x $ROOT/.venv/bin/python ]]; then
    base="$ROOT/.venv/bin/python"
  else
    base=$(command -v python3 || true)
  fi
  printf '[%4d s] %-22s running (%s)\n' "$SECONDS" setup "${base:-no python3}"
  {
    if [[ -z $base ]]; then
      echo "no python3 on PATH"
      rc=3
    else
      PY=$base
      reason=$(probe) || rc=$?
      echo "probe: $reason"
      if ((rc == 3)); then
        local missing
        missing=$("$BOOK_PY" -c 'import json, sys; d = json.load(open(sys.argv[1]))
print(bool(d["missing"]) or not all(d["commands"].values()))' "$OUT_DIR/setup.json" || echo True)
        if [[ $missing == True ]]; then
          rc=0
          make_overlay "$base" || rc=$?
          if ((rc == 0)); then
            reason=$(probe) || rc=$?
            echo "probe: $reason"
          else
            reason="installing into a venv over $base failed (exit $rc; logs/setup.stderr)"
          fi
        fi
      fi
    fi
  } >"$LOGS/setup.stdout" 2>"$LOGS/setup.stderr" || rc=$?
  t1=$(now)
  if ((rc != 0)); then
    status=failed
    [[ $reason ]] || reason=$(grep -v '^[[:space:]]*$' "$LOGS/setup.stderr" | tail -n 1 || true)
    STOP_REASON="setup failed: $reason"
  fi
  export GPU_PY="$PY"
  book mark setup "$status" "$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')" \
    "$OUT_DIR/setup.json" "$reason" >/dev/null
  tally setup "$status" "$reason"
}

run_benchmarks() {
  local bench="$ROOT/bench" crl_export
  crl_export="$(dirname "${PY:-python3}")/crl-export"
  cd "$ROOT"

  # Training throughput: the paper's sizes on ant at depth 64 and 256, fp32 and bf16.
  if [[ $MODE == smoke ]]; then
    wanted train_throughput_d4 && run_step train_throughput_d4 150 \
      "$OUT_DIR/train_throughput_d4.json" -- "$PY" "$bench/train_throughput.py" --task reacher \
      --depths 4 --dtypes fp32 --width 32 --num-envs 4 --batch-size 16 --unroll-length 4 \
      --sgd-steps 1 --iterations 1 --out "$OUT_DIR/train_throughput_d4.json"
  else
    wanted train_throughput_d64 && run_step train_throughput_d64 150 \
      "$OUT_DIR/train_throughput_d64.json" -- "$PY" "$bench/train_throughput.py" \
      --depths 64 --dtypes fp32 bf16 --iterations 2 --out "$OUT_DIR/train_throughput_d64.json"
    wanted train_throughput_d256 && run_step train_throughput_d256 180 \
      "$OUT_DIR/train_throughput_d256.json" -- "$PY" "$bench/train_throughput.py" \
      --depths 256 --dtypes fp32 bf16 --iterations 1 \
      --out "$OUT_DIR/train_throughput_d256.json"
  fi

  # Simulation: MJX's jax and warp backends on the same GPU; jax alone where warp refuses.
  local sim_sizes=(--tasks ant humanoid --num-envs 1024 8192 --steps 200 --repeats 3)
  [[ $MODE == smoke ]] && sim_sizes=(--quick)
  if wanted sim_throughput || wanted sim_throughput_jax; then
    STEP_STATUS=unavailable
    wanted sim_throughput && run_step sim_throughput 150 "$OUT_DIR/sim_throughput.json" -- \
      "$PY" "$bench/sim_throughput.py" "${sim_sizes[@]}" --physics jax warp \
      --out "$OUT_DIR/sim_throughput.json"
    if [[ $STEP_STATUS == unavailable ]]; then
      run_step sim_throughput_jax 120 "$OUT_DIR/sim_throughput_jax.json" -- "$PY" \
        "$bench/sim_throughput.py" "${sim_sizes[@]}" --physics jax \
        --out "$OUT_DIR/sim_throughput_jax.json"
    fi
  fi

  # The exported policy: ONNX, TensorRT engines, and its latency on every GPU backend.
  local depth=64 width=256 max_batch=1024 latency_sizes=(--batches 1 64 1024 --iterations 1000)
  if [[ $MODE == smoke ]]; then
    depth=8 width=64 max_batch=64 latency_sizes=(--quick)
  fi
  mkdir -p "$WORK/policy"
  if wanted export_onnx || wanted tensorrt_fp32 || wanted tensorrt_fp16; then
    run_step export_onnx 90 "$OUT_DIR/export_onnx.json" -- "$PY" -c "$EXPORT" "$depth" \
      "$width" "$WORK/policy" "$OUT_DIR/export_onnx.json"
    local precision
    for precision in fp32 fp16; do
      wanted "tensorrt_$precision" || continue
      if [[ -z $STOP_REASON && ! -f $WORK/policy/actor_$precision.onnx ]]; then
        skip_step "tensorrt_$precision" "$OUT_DIR/tensorrt_$precision.json" \
          "export_onnx wrote no actor_$precision.onnx"
        continue
      fi
      # The engine stays in the scratch folder; its sidecar JSON is the step's result.
      run_step "tensorrt_$precision" 150 "$OUT_DIR/tensorrt_$precision.json" -- bash -c \
        '"$1" tensorrt --onnx "$2" --out "$3" --precision "$4" --max-batch "$5" \
           && cp "$3.json" "$6"' _ "$crl_export" "$WORK/policy/actor_$precision.onnx" \
        "$WORK/policy/actor_$precision.engine" "$precision" "$max_batch" \
        "$OUT_DIR/tensorrt_$precision.json"
    done
  fi
  wanted policy_latency_gpu && run_step policy_latency_gpu 150 \
    "$OUT_DIR/policy_latency_gpu.json" -- "$PY" "$bench/policy_latency_gpu.py" \
    "${latency_sizes[@]}" --out "$OUT_DIR/policy_latency_gpu.json"

  # Depth 4 against 64 on one paper task, for the time left.
  wanted depth_sweep && run_depth_sweep
  return 0
}

run_depth_sweep() {
  # The sweep's folder is in the results: sweep.json, sweep.png, and each run's config, spec,
  # eval.json and learning curve (its checkpoints are deleted after the step).
  local folder="$OUT_DIR/depth_sweep" args plan
  local task=$SWEEP_TASK depths=4,64 preset=paper steps every iteration prefill
  if [[ $MODE == smoke ]]; then
    task=reacher depths=4 preset=quick steps=48
    args="--width 32 --num-envs 4 --unroll-length 4 --batch-size 16 --buffer-steps 16"
    args+=" --min-replay-steps 8 --env-steps-per-update 4 --eval-every 1000000000"
    args+=" --eval-episodes 2 --no-held-out --keep-checkpoints 1 --action-rate-penalty 0"
    args+=" --temporal-penalty 0 --spatial-penalty 0"
  else
    if [[ $STOP_REASON ]]; then
      skip_step depth_sweep "$folder/sweep.json" "$STOP_REASON"
      return 0
    fi
    if [[ $SWEEP_STEPS ]]; then
      steps=$SWEEP_STEPS
      every=$(((steps / 4) > 0 ? steps / 4 : 1))
      plan="--sweep-steps $steps"
    else
      local sizes
      sizes=$("$PY" -c 'from crl.train.config import PAPER as P
r = P.replay; print(r.num_envs * r.unroll_length, r.num_envs * r.min_replay_steps)') || true
      read -r iteration prefill <<<"${sizes:-31744 512000}"
      plan=$(book sweep-plan $(($(left_s) - 20)) "$SWEEP_RUN_OVERHEAD_S" "$SWEEP_MIN_TRAIN_S" \
        "$SWEEP_DEFAULT_RATE" "$iteration" "$prefill")
      read -r steps every plan <<<"$plan"
    fi
    if ((steps == 0)); then
      skip_step depth_sweep "$folder/sweep.json" "not enough time left: $plan"
      return 0
    fi
    echo "         depth_sweep plan: $steps env steps a run, evaluated every $every ($plan)"
    args="--eval-every $every --keep-checkpoints 1"
  fi
  # A sweep folder from an earlier run (--only depth_sweep --out it) is kept aside: a sweep of
  # other settings would refuse to continue it.
  [[ ! -e $folder ]] || mv "$folder" "$folder-before-$(date -u +%H%M%S)"
  run_step depth_sweep "$BUDGET_S" "$folder/sweep.json" -- "$PY" "$ROOT/bench/depth_sweep.py" \
    "$task" --depths "$depths" --seeds 1 --steps "$steps" --preset "$preset" --out "$folder" \
    --train-args="$args"
  if ((!KEEP_WORK)) && [[ -d $folder ]]; then
    find "$folder" -mindepth 2 -maxdepth 2 -type d -name checkpoints -exec rm -rf {} +
  fi
  return 0
}

finish() {
  book summary
  echo "gpu.sh: $(($(date +%s) - ${GPU_START%.*})) s; summary in $OUT_DIR/summary.json"
  if ((ERRORS)); then
    echo "gpu.sh: $ERRORS step(s) failed, crashed or timed out (see the summary and logs/)" >&2
    return 1
  fi
  return 0
}

main() {
  parse_args "$@"
  init_run
  run_setup
  run_benchmarks
  finish
}

if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
  main "$@"
fi
