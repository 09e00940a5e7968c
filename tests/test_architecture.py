"""The layers of DESIGN.md, enforced: the import contracts in pyproject.toml hold, and an
import that points the wrong way breaks them (so the check is not vacuous)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def lint_imports(tree: Path) -> subprocess.CompletedProcess[str]:
    """lint-imports on the ``service`` package found in ``tree``, with ``tree``'s contracts."""
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", str(tree / "pyproject.toml")],
        cwd=tree,
        env={**os.environ, "PYTHONPATH": str(tree)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def copy_of_the_package(tmp_path: Path) -> Path:
    shutil.copytree(ROOT / "service", tmp_path / "service", symlinks=True)
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def test_the_import_contracts_hold() -> None:
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.parametrize(
    ("module", "wrong_import", "broken"),
    [
        # The pure core reaching up into the loop that runs it.
        ("core/machine.py", "from service.worker import daemon", "service.core is not allowed"),
        # An adapter reaching the wiring (which would read settings, start stand-ins).
        ("providers/lookup.py", "import service.runtime", "service.providers is not allowed"),
        # Two adapters that must not know each other.
        ("storage/local.py", "import service.database.postgres", "service.storage is not allowed"),
        # The core doing IO.
        ("core/job.py", "import asyncpg", "service.core is not allowed to import asyncpg"),
        # A port naming a driver.
        ("database/port.py", "import asyncpg", "service.database.port is not allowed"),
    ],
)
def test_an_import_that_points_the_wrong_way_breaks_a_contract(
    tmp_path: Path, module: str, wrong_import: str, broken: str
) -> None:
    tree = copy_of_the_package(tmp_path)
    with (tree / "service" / module).open("a") as source:
        source.write(f"\n{wrong_import}  # deliberately wrong\n")
    result = lint_imports(tree)
    assert result.returncode != 0, result.stdout
    assert broken in result.stdout, result.stdout
