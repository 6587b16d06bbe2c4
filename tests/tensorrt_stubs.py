"""Prepare tensorrt-stubs for mypy: `python tests/tensorrt_stubs.py SITE_PACKAGES OUT_DIR`.

tensorrt-stubs installs `tensorrt/` and `tensorrt_bindings/` as bare `.pyi` folders without
`py.typed`, so mypy never reads them (every TensorRT name silently becomes `Any`), and a few of
its generated signatures are not valid Python (a parameter named `in`, a parameter without a
default after ones with defaults). This copies both folders to OUT_DIR, for MYPYPATH, and
repairs those signatures; the Makefile runs it once, when it installs the stubs.
"""

from __future__ import annotations

import ast
import keyword
import re
import shutil
import sys
from pathlib import Path

PACKAGES = ("tensorrt", "tensorrt_bindings")
PARAM = re.compile(r"(\w+)(:[^,=)]+)?(\s*=\s*[^,)]+)?")


def repair_signature(line: str) -> str:
    """A `def` line that does not parse, made valid with the same meaning for a type checker."""
    head, sep, rest = line.partition("(")
    params, close, tail = rest.rpartition(")")
    out, defaulted = [], False
    for raw in _split(params):
        name, annotation, default = PARAM.fullmatch(raw.strip()).groups()  # type: ignore[union-attr]
        if keyword.iskeyword(name):
            name += "_"
        if default:
            defaulted = True
        elif defaulted:
            default = " = ..."
        out.append(f"{name}{annotation or ''}{default or ''}")
    return f"{head}{sep}{', '.join(out)}{close}{tail}"


def _split(params: str) -> list[str]:
    """Split a parameter list on top-level commas (not those inside brackets)."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(params):
        if ch in "[(":
            depth += 1
        elif ch in "])":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(params[start:i])
            start = i + 1
    parts.append(params[start:])
    return [p for p in parts if p.strip()]


def _parses(line: str) -> bool:
    text = line.strip()
    try:
        ast.parse(text + (" ..." if text.endswith(":") else ""))
    except SyntaxError:
        return False
    return True


def main(site_packages: str, out_dir: str) -> int:
    out = Path(out_dir)
    shutil.rmtree(out, ignore_errors=True)
    for package in PACKAGES:
        source = Path(site_packages) / package
        if not (source / "__init__.pyi").is_file():
            print(f"tensorrt_stubs: no stubs at {source}; install tensorrt-stubs", file=sys.stderr)
            return 1
        shutil.copytree(source, out / package)
    repaired = 0
    for stub in sorted(out.rglob("*.pyi")):
        lines = stub.read_text().splitlines()
        for i, line in enumerate(lines):
            if line.lstrip().startswith("def ") and not _parses(line):
                lines[i] = repair_signature(line)
                repaired += 1
                if not _parses(lines[i]):
                    print(f"tensorrt_stubs: cannot repair {stub}:{i + 1}", file=sys.stderr)
                    return 1
        stub.write_text("\n".join(lines) + "\n")
        ast.parse(stub.read_text(), str(stub))  # the whole stub must now be valid Python
    print(f"tensorrt_stubs: {out} ready ({repaired} signatures repaired)")
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        print(__doc__.splitlines()[0], file=sys.stderr)
        raise SystemExit(2)
    raise SystemExit(main(sys.argv[1], sys.argv[2]))
