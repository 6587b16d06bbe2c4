"""Render the generated blocks of README.md and docs/*.md from their one source.

A figure or a fact that has one source is written there once and rendered here, so a doc cannot
drift from it. A block sits between `<!-- generated: SOURCE [VIEW] -->` and
`<!-- end generated -->`; SOURCE is one of

- `bench/results/NAME.json`: a benchmark's results, rendered by the table of its `benchmark`
  field (VIEW picks another table of the same JSON; a benchmark without a table of its own
  gets every scalar it measured);
- `crl.sim.tasks`: the task registry's specs (VIEW `deployment` or `paper`; needs jax);
- `layout`: every module of every folder, from pyproject's package-dir and the tree.

    python docs/generate.py            # rewrite every block in place
    python docs/generate.py --check    # only list the stale blocks (exit 1 if any)

tests/test_docs.py renders every block and fails when a doc disagrees with its source.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from crl.core.usage import CM_PER_M

ROOT = Path(__file__).resolve().parents[1]
DOCS = (ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")))
BLOCK = re.compile(r"<!-- generated: (\S+)(?: (\S+))? -->\n(.*?)<!-- end generated -->\n",
                   re.DOTALL)
TASKS_SOURCE = "crl.sim.tasks"
LAYOUT_SOURCE = "layout"
MS_PER_S = 1000
BYTES_PER_MB = 1e6
BYTES_PER_GB = 1e9
LAYOUT_WIDTH = 100  # ruff's line length: the layout block reads as code


@dataclass(frozen=True)
class Block:
    """One generated block of a doc: where it is and what renders it."""

    source: str
    view: str | None
    start: int
    end: int
    body: str


def blocks(text: str) -> Iterator[Block]:
    for m in BLOCK.finditer(text):
        yield Block(m.group(1), m.group(2), m.start(3), m.end(3), m.group(3))


def table(header: list[str], rows: list[list[str]], align: str) -> str:
    """A markdown table; `align` holds one `l` or `r` a column."""
    rule = ["---:" if a == "r" else "---" for a in align]
    lines = [header, rule, *rows]
    return "".join("| " + " | ".join(cells) + " |\n" for cells in lines)


def when(result: dict[str, Any], path: str) -> str:
    """The caption under a table: its JSON, when it was measured and on what."""
    date = datetime.fromisoformat(result["date"]).strftime("%Y-%m-%d %H:%M UTC")
    device = result.get("device") or result.get("machine") or {}
    cpu = device.get("cpu") or device.get("cpu_model") or "CPU"
    cores = device.get("cores") or device.get("cpu_cores") or result.get("cpu_cores")
    where = device.get("gpu") or (f"{cores}-core {cpu}" if cores else cpu)
    return f"\n`{path}`: measured {date} on the {where}.\n"


def pct(x: float) -> str:
    return f"{x:.1%}"


def cm(metres: float) -> str:
    return f"{metres * CM_PER_M:.2f} cm"


def thousands(x: float) -> str:
    return f"{x:,.0f}"


# --- bench/results/*.json -------------------------------------------------------------------

def quickstart(r: dict[str, Any]) -> str:
    """The learning curve: nominal and held-out scores at each evaluation."""
    rows = []
    for e in r["learning_curve"]:
        nominal, held = e["nominal"], e.get("held_out_dr")
        steps = "0 (untrained)" if e["env_steps"] == 0 else thousands(e["env_steps"])
        held_cells = (f"{pct(held['success_rate'])}, {pct(held['final_success_rate'])}, "
                      f"{cm(held['final_distance_median'])}" if held else "–")
        rows.append([steps, f"{e['wall_s']:.0f}", pct(nominal["success_rate"]),
                     f"{nominal['time_at_goal']:.1f}", cm(nominal["final_distance_median"]),
                     held_cells])
    header = ["env steps", "wall-clock (s, compile included)", "success", "time at goal (steps)",
              "median final distance", "held-out: success, at the end, median"]
    return table(header, rows, "rrrrrr")


def quickstart_best(r: dict[str, Any]) -> str:
    """The best checkpoint (what `make demo` exports) on fresh goals, and the targets."""
    best = r["best_checkpoint"]
    rows = []
    for name, label in (("nominal", "nominal"), ("train_dr", "training ranges"),
                        ("held_out_dr", "held-out ranges")):
        e = best.get(name)
        if e:
            rows.append([label, pct(e["success_rate"]), pct(e["final_success_rate"]),
                         f"{e['time_at_goal']:.1f}", cm(e["final_distance_median"])])
    header = [f"best checkpoint ({thousands(best['env_steps'])} env steps)", "success",
              "at the goal at the end", "time at goal (steps)", "median final distance"]
    targets = ", ".join(f"`{k}`: {v}" for k, v in r["targets"].items())
    return (table(header, rows, "lrrrr") + f"\nTraining took {r['train_wall_s']:.0f} s. "
            f"Targets: {targets}.\n")


def loop_latency(r: dict[str, Any]) -> str:
    rows = []
    for run in r["runs"]:
        p, e2e, err = run["policy"], run["end_to_end_ms"], run["period_error_ms"]
        rows.append([f"{run['hz']:g} Hz, depth {p['depth']} × {p['width']}",
                     f"{err['p99']:.3f} / {err['max']:.1f} ms",
                     f"{run['misses']} of {run['ticks']}",
                     f"{e2e['p50']:.2f} / {e2e['p99']:.2f} ms",
                     str(run["runtime_status"]["stale_stops"]), f"{run['host_steal_s']:.2f} s"])
    base = r.get("platform_baseline")
    if base:
        err = base["period_error_ms"]
        rows.append([f"{base['hz']:g} Hz, the same loop with empty ticks (platform baseline)",
                     f"{err['p99']:.3f} / {err['max']:.1f} ms",
                     f"{base['misses']} of {base['ticks']}", "", "",
                     f"{base['host_steal_s']:.2f} s"])
    seconds = r["runs"][0]["seconds"]
    header = [f"run ({seconds:g} s, {r['runs'][0]['policy']['backend']})",
              "period error p99 / max", "missed deadlines", "end-to-end p50 / p99",
              "stale stops", "host steal"]
    return table(header, rows, "lrrrrr")


def policy_latency(r: dict[str, Any]) -> str:
    """Batch-1 latency of each backend and precision, against the memory-bandwidth bound."""
    bandwidth = r["memory_bandwidth_gb_s"]
    errors = r["action_error_vs_fp32"]
    hz = r["config"]["control_hz"]

    def row(label: str, e: dict[str, Any], error: str = "–", two_cores: bool = False) -> list[str]:
        read = e.get("runtime_weight_bytes") or e["weight_bytes"]
        if two_cores:  # threads that use both cores: against both cores' bandwidth
            ratio = e["p50_ms"] / (read / (bandwidth["two_cores"] * BYTES_PER_GB) * MS_PER_S)
        else:
            ratio = e.get("p50_over_runtime_bound") or e["p50_over_bound"]
        return [label, f"{read / BYTES_PER_MB:.1f} MB", f"{e['p50_ms']:.3f} ms",
                f"{e['p99_ms']:.3f} ms", f"{e['max_ms']:.2f} ms", f"{e['cpu_percent']:.0f}%",
                f"{ratio:.2f}×", error]

    paced = r["ort_batch1_at_control_rate"]
    rows = []
    for precision, e in r["ort_batch1"].items():
        error = f"{errors[precision]['max_abs']:.1e}" if precision in errors else "–"
        rows.append(row(f"ONNX Runtime {precision}, 1 thread", e, error))
        if precision in paced:
            rows.append(row(f"same, paced at {hz:g} Hz", paced[precision], error))
    rows.append(row("ONNX Runtime fp32, 2 threads (both cores' bound)",
                    r["ort_fp32_2_threads_batch1"], two_cores=True))
    rows.append(row("ONNX Runtime fp32, 2 spinning threads (both cores' bound)",
                    r["ort_fp32_2_threads_spinning_batch1"], two_cores=True))
    rows.append(row("JAX jitted actor", r["jax_batch1"], f"{r['fp32_vs_jax_max_abs']:.1e}"))
    rows.append(row("reading the fp32 weights' bytes, nothing else",
                    r["fp32_weight_read_batch1"]))
    rows.append(row(f"same, paced at {hz:g} Hz", r["fp32_weight_read_batch1_at_control_rate"]))
    header = ["backend", "weights read", "p50", "p99", "max", "CPU", "p50 ÷ bound",
              "max action error vs fp32"]
    export = r["export"]
    steal = r["cpu_steal_percent"]
    return (table(header, rows, "lrrrrrrr")
            + f"\nMemory read bandwidth {bandwidth['used']:.1f} GB/s on one core, "
            f"{bandwidth['two_cores']:.1f} GB/s on two; steal {steal['back_to_back']:.1f}% back to "
            f"back, {steal['paced']:.1f}% paced. Exporting a depth-{export['depth']} actor "
            f"({export['bytes'] / BYTES_PER_MB:.0f} MB) took {export['seconds']:.1f} s. "
            f"Targets: " + ", ".join(f"`{k}`: {v}" for k, v in r["targets"].items()) + ".\n")


def learner_speed(r: dict[str, Any]) -> str:
    """One SGD update as the trainer compiles it (the shipped block loop, the unrolled network,
    the shipped loop under the env's options), one `act`, and whole iterations in situ."""
    rows = []
    for row in r["results"]:
        v = row["variants"]
        s, u, e = v["shipped"], v["unrolled"], v["shipped_env_options"]
        act = row["inference"]["variants"]
        ratios = f"{s['time_ratio_to_unrolled']:.2f} / {s['paired_time_ratio_to_unrolled']:.2f}"
        rows.append([str(row["depth"]), f"{s['update_ms']:,.1f}", f"{u['update_ms']:,.1f}", ratios,
                     f"{e['update_ms']:,.1f}", f"{s['compile_s']:.1f} / {u['compile_s']:.1f}",
                     f"{act['shipped']['act_ms']:.3g} / {act['unrolled']['act_ms']:.3g}"])
    shipped = r["shipped"]
    header = ["depth", f"shipped ({shipped['unroll']}:{shipped['remat']}) ms", "unrolled ms",
              "shipped ÷ unrolled (medians / paired rounds)", "shipped, env options ms",
              "compile shipped / unrolled (s)", "JAX `act`, batch 1, shipped / unrolled (ms)"]
    text = table(header, rows, "rrrrrrr")
    it = r.get("iteration")
    if it:
        two, one = it["variants"]["two_programs"], it["variants"]["one_program"]
        text += (f"\nWhole training iterations at depth {it['depth']} ({it['num_envs']} envs × "
                 f"{it['unroll_length']} steps, {it['sgd_steps_per_iteration']} SGD steps, median "
                 f"of {it['rounds']}): the trainer's two programs {two['iteration_s']:,.1f} s "
                 f"({two['env_steps_per_s']:,.0f} env steps/s, compiled in "
                 f"{two['compile_s']:.1f} s), one program under the env's options "
                 f"{one['iteration_s']:,.1f} s ({one['env_steps_per_s']:,.0f} env steps/s, "
                 f"{one['compile_s']:.1f} s); paired ratio "
                 f"{two['paired_time_ratio_to_one_program']:.3f}.\n")
    return text


def learner_speed_candidates(r: dict[str, Any]) -> str:
    """Every candidate block loop of one run, against the unrolled network."""
    rows = []
    for row in r["results"]:
        for name, v in row["variants"].items():
            ratio = v.get("time_ratio_to_unrolled")
            ratio_cell = "1" if name == "unrolled" else f"{ratio:.2f}" if ratio else "–"
            rows.append([str(row["depth"]), name, f"{v['update_ms']:,.1f}", ratio_cell,
                         f"{v['compile_s']:.1f}"])
    return table(["depth", "block loop", "update ms", "÷ unrolled", "compile (s)"], rows,
                 "rlrrr")


def sim_throughput(r: dict[str, Any]) -> str:
    envs = sorted({row["num_envs"] for row in r["results"]})
    by_task: dict[str, dict[int, float]] = {}
    for row in r["results"]:
        by_task.setdefault(row["task"], {})[row["num_envs"]] = row["steps_per_s"]
    rows = [[f"`{task}`", *(thousands(v[n]) if n in v else "–" for n in envs)]
            for task, v in by_task.items()]
    header = ["task", *(f"{n} env" + ("s" if n > 1 else "") for n in envs)]
    return table(header, rows, "l" + "r" * len(envs))


def train_throughput(r: dict[str, Any]) -> str:
    rows = [[str(row["depth"]), f"{row['compile_s']:.1f}",
             thousands(row["collect_env_steps_per_s"]), thousands(row["env_steps_per_s"]),
             f"{row['sgd_steps_per_s']:.3g}"] for row in r["results"]]
    header = ["depth", "compile of one training iteration (s)", "collect-only env steps/s",
              "env steps/s with SGD", "SGD steps/s"]
    return table(header, rows, "rrrrr")


def scale_overhead(r: dict[str, Any]) -> str:
    compile_s, iteration = r["compile_s"], r["median_iteration_s"]
    rows = [[n, f"{compile_s[n]:.1f}", f"{iteration[n]:.3f}"] for n in sorted(iteration, key=int)]
    return (table(["devices", "compile (s)", "median iteration (s)"], rows, "rrr")
            + f"\nRatio 4 ÷ 1: {r['ratio_4_over_1']:.2f}; load average "
            f"{r['load_average_1_5_15'][0]:.1f}. {r['note']}.\n")


def msgspec_messages(r: dict[str, Any]) -> str:
    eq = r["equivalence"]
    rows = [[f"`{case}`", str(row["bytes"]), f"{row['messages']['p50_us']:.2f}",
             f"{row['msgspec']['p50_us']:.2f}", f"{row['msgspec_over_messages']:.2f}×"]
            for case, row in r["speed"].items()]
    return (table(["message", "bytes", "messages p50 (µs)", "msgspec p50 (µs)",
                   "msgspec ÷ messages"], rows, "lrrrr")
            + f"\nEquivalence: {eq['divergent']:,} of {eq['inputs']:,} corpus inputs decoded "
            "differently.\n")


def own_misses(misses: list[dict[str, Any]]) -> str:
    """The runtime's own misses in a soak, each by what its tick spent (crl.runtime.loop's
    TickParts): at most three, then how many more."""
    if not misses:
        return "none"
    shown = [f"{m['at_s']:.0f} s ({m['during']}): {m['work_ms']:.1f} ms of work, "
             f"{m['work_cpu_ms']:.1f} ms CPU, policy {m['fixed_cpu_ms']:.1f} ms, held off "
             f"{m['held_off_ms']:.1f} ms" for m in misses[:3]]
    return "; ".join(shown) + (f"; {len(misses) - 3} more" if len(misses) > 3 else "")


def soak(r: dict[str, Any]) -> str:
    c, a, t = r["config"], r["actions"], r["targets"]
    goals, obs = r["bad_goals"], r["bad_observations"]
    period_ms = 1e3 / c["hz"]
    rows = [
        ["run", f"{c['seconds']:g} s at {c['hz']:g} Hz, depth {c['depth']} × {c['width']}"
                + (", SCHED_FIFO" if c["realtime"] else "")],
        ["runtime exits", str(len(r["runtime"]["exits"]))],
        ["bad goals sent / counted", f"{goals['sent_total']:,} / {goals['counted_total']:,}"],
        ["bad observations sent / counted",
         f"{obs['sent_total']:,} / {obs['counted_total']:,}"],
        ["robot restarts in another pose", str(r["robot_restarts"])],
        ["valid goals accepted", f"{r['valid_goals']['accepted']} of {r['valid_goals']['sent']}"],
        ["longest gap between actions",
         f"{a['max_gap_ms']:.1f} ms ({a['max_gap_ms'] / period_ms:.2f} periods)"],
        *([["less the platform's measured holds in it",
            f"{a['max_gap_less_holds_ms']:.1f} ms"]] if "max_gap_less_holds_ms" in a else []),
        *([["own misses, their parts", own_misses(r["own_misses"])]]
          if "own_misses" in r else []),
        *([["platform baseline's longest gap between ticks",
            f"{r['platform_baseline']['longest_gap_ms']:.1f} ms"]]
          if "longest_gap_ms" in r["platform_baseline"] else []),
        ["missed deadlines (platform baseline)",
         f"{r['runtime']['misses']} ({r['platform_baseline']['misses']})"],
        *([["of which the platform held the loop off (platform baseline)",
            f"{r['runtime']['misses_scheduling']} "
            f"({r['platform_baseline'].get('misses_scheduling', '–')})"]]
          if r["runtime"].get("misses_scheduling") is not None else []),
        *([["policy calls the machine ran over twice as slow", str(r["runtime"]["policy_slowed"])]]
          if r["runtime"].get("policy_slowed") is not None else []),
        ["largest command step (rate limit)", f"{a['max_step']:.3f} ({a['rate_limit']:g})"],
        ["first command to a restarted robot, from its pose",
         f"{a['max_first_step_from_measured']:.3f}"],
        ["non-finite or out-of-limit actions", str(a["nonfinite"] + a["out_of_limit"])],
        ["targets met", "all" if r["targets_met"] else
         "not: " + ", ".join(k for k, v in t.items() if not v)],
    ]
    return table(["soak", "measured"], rows, "lr")


def hold(r: dict[str, Any]) -> str:
    """Each recipe's held-out at-the-end success and oscillation at every checkpoint from 300k
    steps on ("–" where a run kept or evaluated none), and the checkpoint `--best` exports."""
    steps = sorted({c["env_steps"] for run in r["runs"] for c in run["checkpoints"]
                    if c["env_steps"] >= 300_000})
    rows = []
    for run in r["runs"]:
        by_step = {c["env_steps"]: c["held_out"] for c in run["checkpoints"]}
        cells = " · ".join(pct(by_step[s]["final_success_rate"]) if s in by_step else "–"
                           for s in steps)
        osc = " · ".join(f"{by_step[s]['oscillation']:.2f}" if s in by_step else "–"
                         for s in steps)
        best = by_step.get(run["best_step"])  # not evaluated: a run's last checkpoints only
        at_best = pct(best["final_success_rate"]) if best else "not evaluated"
        rows.append([run["label"], f"±{run['action_scale'][0]:.3g}", str(run["seed"]), cells,
                     osc, f"{thousands(run['best_step'])}: {at_best}"])
    header = ["recipe", "shoulder (rad)", "seed", "held-out, at the goal at the end ("
              + " · ".join(f"{s // 1000}k" for s in steps) + ")", "oscillation",
              "`--best`: held-out"]
    return (table(header, rows, "lrrrrr")
            + f"\n{r['episodes']:,} held-out episodes a checkpoint, the same for every run.\n")


def hold_by_split(r: dict[str, Any]) -> str:
    """Per run and kept checkpoint: at-the-end success under the training ranges (the
    trainer's own evaluation) and under the held-out ranges, with reach and the final distance."""
    rows = []
    for run in r["runs"]:
        for c in run["checkpoints"]:
            train, held = c["train_dr_trainer"], c["held_out"]
            wall = c.get("wall_s")
            rows.append([run["label"], str(run["seed"]), thousands(c["env_steps"]),
                         f"{wall:.0f}" if wall is not None else "–",
                         pct(train["final_success_rate"]) if train else "–",
                         pct(held["final_success_rate"]), pct(held["success_rate"]),
                         f"{100 * held['final_distance_median']:.1f}",
                         f"{held['oscillation']:.2f}"])
    header = ["recipe", "seed", "checkpoint", "wall time (s)",
              "training ranges: at the goal at the end",
              "held-out: at the end", "held-out: reached", "held-out: median final (cm)",
              "held-out: oscillation"]
    return (table(header, rows, "lrrrrrrrr")
            + f"\n`{r['task']}`: {r['episodes']:,} held-out episodes a checkpoint; the training "
            "ranges' figures are the trainer's own evaluation (its episodes).\n")


def robustness(r: dict[str, Any]) -> str:
    """Per quantity: the ranges, where the policy holds, and its worst point on the grid."""
    def spans(s: list[list[float]]) -> str:
        return ", ".join(f"{a:g}" if a == b else f"{a:g}–{b:g}" for a, b in s) or "–"

    rows = []
    for q, points in r["points"].items():
        span = r["holds"][q]
        worst = min(points, key=lambda p: p["final_success_rate"])
        rows.append([q.replace("_", " "), spans(r["ranges"][q]["train"]),
                     spans(r["ranges"][q]["held_out"]),
                     "fails at nominal" if span is None else f"{span[0]:g}–{span[1]:g}",
                     f"{pct(worst['final_success_rate'])} at {worst['value']:g}"])
    header = ["quantity", "training", "held-out",
              f"holds (≥ {pct(r['grid']['threshold'])} at the end)", "worst point"]
    return (table(header, rows, "lllll")
            + f"\n`{r['policy']}`, {r['grid']['episodes']} episodes a point.\n")


def closed_loop_seeds(r: dict[str, Any]) -> str:
    """Each policy on each goal seed: goals held at the end, median distance, oscillation."""
    rows = [[f"`{Path(run['policy']).name}`", str(run["goal_seed"]),
             f"{run['reached']}/{run['goals']}", cm(run["final_distance_median"]),
             f"{run['oscillation']:.2f}"] for run in r["runs"]]
    return table(["policy", "goal seed", "at the goal at the end", "median final distance",
                  "oscillation"], rows, "lrrrr")


def chained_goals(r: dict[str, Any]) -> str:
    """Each policy on each goal seed, goals one after another with no reset, ramp on and off."""
    rows = [[f"`{Path(run['policy']).name}`", str(run["goal_seed"]),
             "on" if run["goal_ramp"] else "off", f"{run['reached']}/{run['goals']}",
             cm(run["final_distance_median"]), str(run["joint_jumps"])] for run in r["runs"]]
    return table(["policy", "goal seed", "goal ramp", "at the goal at the end",
                  "median final distance", "read as restarts (`joint_jumps`)"], rows, "lrlrrr")



def goal_sweep(r: dict[str, Any]) -> str:
    """Each policy from each start pose: goals on a circle held at the end, and where it missed."""
    rows = []
    for run in r["runs"]:
        total = len(run["angles_deg"])
        for start in run["starts"]:
            missed = start["missed_angles_deg"]
            where = ", ".join(f"{a:g}°" for a in missed) or "none"
            rows.append([f"`{Path(run['policy']).name}`",
                         ", ".join(f"{v:g}" for v in start["start"]),
                         f"{total - len(missed)}/{total}", where])
    return table(["policy", "start (rad)", "at the goal at the end", "missed at"], rows, "lrrl")

def closed_loop_ros(r: dict[str, Any]) -> str:
    """Each policy over ROS: goals held at the end, median distance, the node's loop."""
    rows = [[f"`{Path(run['policy']).name}`", str(run["sim_seed"]),
             f"{run['reached']}/{run['goals']}", cm(run["final_distance_median"]),
             f"{run['rate_hz']:.2f}", f"{run['misses']} / {run['ticks']:,}",
             f"{run['end_to_end_p99_ms']:.2f}"] for run in r["runs"]]
    return table(["policy", "sim seed", "at the goal at the end", "median final distance",
                  "rate (Hz)", "misses / ticks", "end-to-end p99 (ms)"], rows, "lrrrrrr")


def wake_latency(r: dict[str, Any]) -> str:
    """The closed loop with the CPUs' wake-up latency held at 0 and with the request void, run
    by run in the order measured."""
    def p50_p99(ms: dict[str, float]) -> str:
        return f"{ms['p50']:.2f} / {ms['p99']:.2f}"

    rows = [[str(i // 2 + 1), "held" if run["wake_latency_held"] else "void",
             f"{run['reached']}/{run['goals']}", f"{run['policy_ms']['p99']:.2f}",
             p50_p99(run["runtime_end_to_end_ms"]), p50_p99(run["robot_end_to_end_ms"]),
             str(run["misses"])] for i, run in enumerate(r["runs"])]
    return table(["pair", "wake-up latency request", "goals", "policy p99 (ms)",
                  "runtime end-to-end p50 / p99 (ms)", "robot-measured p50 / p99 (ms)",
                  "misses"], rows, "llrrrrr")


def loop_drift(r: dict[str, Any]) -> str:
    """Each run against a robot whose clock drifts: latency against the policy's, slips, misses
    and whether every target held."""
    rows = [[run["setup"] + (", SCHED_FIFO" if run.get("realtime") else ""),
             f"{run['clock_ppm']:+g}", f"{run['ticks']:,}", str(run["misses"]),
             f"{run['samples_skipped']} / {run['samples_repeated']}",
             f"{run['policy_p99_ms']:.2f}", f"{run['runtime_end_to_end_ms']['p99']:.2f}",
             f"{run['robot_end_to_end_ms']['p99']:.2f}",
             f"{run['stale_stops']} / {run['safe_ticks']:,}" if "stale_stops" in run else "–",
             "all" if all(run["targets"].values())
             else ", ".join(k for k, ok in run["targets"].items() if not ok) + " missed"]
            for run in r["runs"]]
    return table(["setup", "robot clock (ppm)", "ticks", "misses", "skipped / repeated",
                  "policy p99 (ms)", "runtime end-to-end p99 (ms)", "robot-measured p99 (ms)",
                  "stale stops / safe ticks", "targets"], rows, "lrrrrrrrrl")


def transport_floor(r: dict[str, Any]) -> str:
    """Each variant's round trip (and crl's two legs) with no policy between."""
    names = {"zmq": "bare pyzmq PUB/SUB", "crl": "crl's RobotLink / RuntimeLink"}
    rows = [[names[variant], leg.replace("_", " "), f"{v['p50']:.3f}", f"{v['p90']:.3f}",
             f"{v['p99']:.3f}", f"{v['max']:.2f}", f"{v['samples']:,}"]
            for variant, legs in r["variants"].items() for leg, v in legs.items()]
    return table(["transport", "span", "p50 (ms)", "p90 (ms)", "p99 (ms)", "max (ms)",
                  "samples"], rows, "llrrrrr")


CONTEXT_KEYS = {"benchmark", "date", "device", "machine", "versions", "config"}


def summary(r: dict[str, Any]) -> str:
    """Any benchmark without a table of its own: every scalar it measured, by its JSON path."""
    rows: list[list[str]] = []

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        elif isinstance(value, bool | int | float | str):
            shown = f"{value:.4g}" if isinstance(value, float) else str(value)
            rows.append([f"`{prefix}`", shown])

    walk("", {k: v for k, v in r.items() if k not in CONTEXT_KEYS})
    return table(["measured", "value"], rows, "lr")


Renderer = Callable[[dict[str, Any]], str]
BENCH_VIEWS: dict[tuple[str, str | None], Renderer] = {
    ("quickstart", None): quickstart,
    ("quickstart", "best"): quickstart_best,
    ("loop_latency", None): loop_latency,
    ("policy_latency", None): policy_latency,
    ("learner_speed", None): learner_speed,
    ("learner_speed", "candidates"): learner_speed_candidates,
    ("sim_throughput", None): sim_throughput,
    ("train_throughput", None): train_throughput,
    ("scale_overhead", None): scale_overhead,
    ("msgspec_messages", None): msgspec_messages,
    ("soak", None): soak,
    ("hold", None): hold,
    ("hold", "by_split"): hold_by_split,
    ("robustness", None): robustness,
    ("closed_loop_seeds", None): closed_loop_seeds,
    ("closed_loop_ros", None): closed_loop_ros,
    ("chained_goals", None): chained_goals,
    ("goal_sweep", None): goal_sweep,
    ("loop_drift", None): loop_drift,
    ("wake_latency", None): wake_latency,
    ("transport_floor", None): transport_floor,
}


def bench_block(path: str, view: str | None) -> str:
    result = json.loads((ROOT / path).read_text())
    key = (result["benchmark"], view)
    if view is not None and key not in BENCH_VIEWS:
        raise KeyError(f"{path}: no table for benchmark {key[0]!r} view {view!r}")
    text = BENCH_VIEWS.get(key, summary)(result)
    return text + when(result, path) if "date" in result else text


# --- crl.sim.tasks ---------------------------------------------------------------------------

def tasks_block(view: str | None) -> str:
    """The task table from the registry's specs: one source for sizes, rates and radii."""
    from crl.sim import tasks

    names = {"deployment": tasks.DEPLOYMENT_TASKS, "paper": tuple(tasks.PAPER_TASKS)}[view or ""]
    rows = []
    for name in names:
        env = tasks.make(name, dr="off")
        s = env.spec
        obs = ", ".join(f"{f.name} {f.size}" for f in s.observation)
        goal = ", ".join(f"{f.name} {f.size}" for f in s.goal.fields)
        rows.append([f"`{name}`", f"{s.obs_dim}: {obs}", f"{s.goal_dim}: {goal}",
                     f"{s.act_dim} {s.action.kind}"
                     + (f", low-pass {s.action.lowpass:g}" if s.action.lowpass < 1 else "")
                     + (f", goal ramp {s.action.goal_ramp}" if s.action.goal_ramp else ""),
                     f"{s.control_hz:.3g} Hz",
                     str(env.episode_length), f"{s.success_radius:g} m"])
    header = ["task", "observation", "goal", "action", "control", "episode (steps)", "success"]
    return table(header, rows, "lllllrr")


# --- layout ----------------------------------------------------------------------------------

def _wrapped(prefix: str, items: list[str]) -> list[str]:
    lines, line = [], prefix
    for i, item in enumerate(items):
        word = item + ("," if i < len(items) - 1 else "")
        if len(line) + 1 + len(word) > LAYOUT_WIDTH and line.strip():
            lines.append(line.rstrip())
            line = " " * len(prefix)
        line += ("" if line.endswith(" ") else " ") + word
    lines.append(line.rstrip())
    return lines


def _modules(folder: Path) -> list[str]:
    """A folder's modules, its subfolders' (`tasks/x`), its data files' kinds (`assets/*.xml`)."""
    items = sorted(p.stem for p in folder.glob("*.py") if p.name != "__init__.py")
    for sub in sorted(p for p in folder.iterdir() if p.is_dir() and p.name != "__pycache__"):
        py = sorted(p.stem for p in sub.glob("*.py") if p.name != "__init__.py")
        if py:
            items += [f"{sub.name}/{m}" for m in py]
        else:
            kinds = sorted({p.suffix for p in sub.iterdir() if p.is_file()})
            items += [f"{sub.name}/*{k}" for k in kinds]
    return items


def layout_block() -> str:
    """Every module of every folder: the crl packages (pyproject's package-dir), the ROS
    package, the benchmarks and the doc generator."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    package_dir: dict[str, str] = pyproject["tool"]["setuptools"]["package-dir"]
    lines = []
    for package, folder in package_dir.items():  # pyproject lists them floor by floor
        lines += _wrapped(f"{folder + '/':<10}  {package:<13}", _modules(ROOT / folder))
    ros = ROOT / "ros2_ws" / "src" / "crl_runtime"
    ros_items = [*_modules(ros / "crl_runtime"), "launch/", "config/", "controllers/", "rviz/",
                 "test/"]
    lines += _wrapped(f"{'ros2_ws/':<10}  {'crl_runtime':<13}", ros_items)
    lines += _wrapped(f"{'bench/':<10}  {'scripts':<13}", _modules(ROOT / "bench"))
    lines += _wrapped(f"{'docs/':<10}  {'':<13}", ["*.md", "generate"])
    lines += _wrapped(f"{'tests/':<10}  {'pytest':<13}", ["test_*", "conftest", "fixtures"])
    return "```\n" + "\n".join(lines) + "\n```\n"


# --- the docs --------------------------------------------------------------------------------

def render_block(source: str, view: str | None) -> str:
    if source == TASKS_SOURCE:
        return tasks_block(view)
    if source == LAYOUT_SOURCE:
        return layout_block()
    return bench_block(source, view)


def render(text: str) -> str:
    """The doc with every generated block rendered anew."""
    out, last = [], 0
    for b in blocks(text):
        out += [text[last:b.start], render_block(b.source, b.view)]
        last = b.end
    return "".join(out) + text[last:]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only list the stale blocks")
    args = parser.parse_args(argv)
    stale = []
    for path in DOCS:
        text = path.read_text()
        new = render(text)
        if new != text:
            stale.append(path.relative_to(ROOT))
            if not args.check:
                path.write_text(new)
    for path in stale:
        print(f"{'stale' if args.check else 'rewrote'}: {path}")
    return 1 if stale and args.check else 0


if __name__ == "__main__":
    sys.exit(main())
