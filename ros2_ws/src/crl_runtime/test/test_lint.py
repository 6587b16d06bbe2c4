"""ROS's linters on the package: ament_flake8 and ament_pep257 (the ROS 2 conventions)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("linter", ["flake8", "pep257"])
def test_ament_linters(linter: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(PACKAGE)
    if linter == "flake8":
        from ament_flake8.main import main_with_errors

        rc, errors = main_with_errors(argv=["."])
        assert rc == 0, f"ament_flake8: {len(errors)} error(s):\n" + os.linesep.join(errors)
    else:
        from ament_pep257.main import main

        assert main(argv=["."]) == 0, "ament_pep257 found errors (printed above)"
