"""The docs agree with their sources: generated tables, `make demo`'s steps and every link.

A figure or a fact with one source (a benchmark's JSON, the task registry, the tree) is rendered
into the docs by docs/generate.py; these tests render each block again and fail when the doc
differs, so a doc cannot drift from what it quotes. The README stays a five-minute read.
"""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = [README, ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").glob("*.md"))]
README_MAX_LINES = 250
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)
UTC_TIME = re.compile(r"\b\d{1,2}:\d{2} UTC\b")


def load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("docs_generate", ROOT / "docs" / "generate.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


generate = load_generator()


def generated_blocks() -> list[tuple[Path, Any]]:
    return [(path, block) for path in DOCS for block in generate.blocks(path.read_text())]


@pytest.mark.parametrize(("path", "block"), generated_blocks(),
                         ids=lambda x: x.name if isinstance(x, Path) else
                         f"{x.source}{':' + x.view if x.view else ''}")
def test_every_generated_block_matches_its_source(path: Path, block: Any) -> None:
    source, view, body = block.source, block.view, block.body
    if source == generate.TASKS_SOURCE:
        pytest.importorskip("jax", reason="the task table is rendered from MJX envs (train extra)")
    assert body == generate.render_block(source, view), (
        f"{path.relative_to(ROOT)}: the block from {source} is stale: "
        "run `python docs/generate.py`")


def test_the_benchmark_docs_render_every_result() -> None:
    """Every committed benchmark JSON has a table somewhere, so none is quoted by hand."""
    sources = {b.source for _, b in generated_blocks()}
    results = {f"bench/results/{p.name}" for p in (ROOT / "bench" / "results").glob("*.json")}
    assert results <= sources, (f"not rendered in any doc: {sorted(results - sources)}: add a "
                                "block for it to docs/benchmarks.md and run docs/generate.py")


def test_a_stale_table_is_caught() -> None:
    text = (ROOT / "docs" / "benchmarks.md").read_text()
    block = next(b for b in generate.blocks(text) if b.source.endswith("sim_throughput_cpu.json"))
    edited = text[:block.start] + block.body.replace("|", "| 1", 1) + text[block.end:]
    assert generate.render(edited) == generate.render(text) != edited


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    found = set()
    for heading in re.findall(r"^#+ (.+)$", FENCE.sub("", path.read_text()), re.MULTILINE):
        base = slug(heading)
        n = seen.get(base, 0)
        seen[base] = n + 1
        found.add(base if n == 0 else f"{base}-{n}")
    return found


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.name)
def test_every_relative_link_points_to_a_file_and_heading(path: Path) -> None:
    for target in LINK.findall(FENCE.sub("", path.read_text())):
        if re.match(r"[a-z]+:", target):
            continue  # http(s), mailto: not ours to check offline
        file, _, anchor = target.partition("#")
        dest = (path.parent / file).resolve() if file else path
        assert dest.exists(), f"{path.name}: link to {target}: no such file"
        if anchor:
            assert anchor in anchors(dest), f"{path.name}: link to {target}: no such heading"


def demo_commands() -> list[str]:
    """`make demo`'s commands as a user types them: without `$(BIN)/`, in `demo/`."""
    recipe = re.search(r"^demo:.*\n((?:\t.*\n)+)", (ROOT / "Makefile").read_text(), re.MULTILINE)
    assert recipe, "Makefile: no demo recipe"
    joined = re.sub(r"\\\n\s*", "", recipe.group(1))
    commands = []
    for line in joined.splitlines():
        line = line.strip()
        if line.startswith("$(BIN)/"):
            line = line.removeprefix("$(BIN)/").replace("$(DEMO_DIR)", "demo")
            commands.append(" ".join(line.split()))
    return commands


def test_the_readme_lists_make_demos_steps_as_the_makefile_runs_them() -> None:
    steps = re.findall(r"^\d+\. `(crl-[^`]+)`", README.read_text(), re.MULTILINE)
    assert steps == demo_commands()


def test_the_readme_is_a_five_minute_read() -> None:
    text = README.read_text()
    assert len(text.splitlines()) <= README_MAX_LINES
    assert "source .venv/bin/activate" in text
    assert not UTC_TIME.findall(text), "measurement times belong in docs/ and CHANGELOG.md"
