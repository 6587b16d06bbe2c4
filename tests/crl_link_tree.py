"""A crl package tree for static tools: `python tests/crl_link_tree.py OUT_DIR`.

The stage folders install as crl.sim, crl.train, ... through pyproject's package-dir, and the
editable install serves that mapping with an import hook, which mypy does not run: it finds no
`crl` at all. This makes OUT_DIR/crl/<stage> a link to each mapped folder, read from
package-dir itself (the one list of them), so OUT_DIR on MYPYPATH resolves `crl.*` to the
working tree. The links are to folders, so a new module is seen without running this again.
"""

from __future__ import annotations

import os
import shutil
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def package_dirs(pyproject: Path) -> dict[str, str]:
    """pyproject's [tool.setuptools] package-dir: package name -> folder, relative to it."""
    with pyproject.open("rb") as f:
        mapping: dict[str, str] = tomllib.load(f)["tool"]["setuptools"]["package-dir"]
    return mapping


def link_tree(out: Path, root: Path = ROOT) -> list[Path]:
    """Replace out's package tree with links to the folders package-dir maps; returns them."""
    mapping = package_dirs(root / "pyproject.toml")
    for top in {name.split(".")[0] for name in mapping} - {""}:
        shutil.rmtree(out / top, ignore_errors=True)  # a stage dropped from package-dir goes too
    links = []
    for name, folder in sorted(mapping.items()):
        link = out.joinpath(*name.split("."))
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(os.path.relpath(root / folder, link.parent), link, target_is_directory=True)
        links.append(link)
    return links


if __name__ == "__main__":
    made = link_tree(Path(sys.argv[1]))
    print(f"crl_link_tree: {sys.argv[1]}: {', '.join(str(p) for p in made)}")
