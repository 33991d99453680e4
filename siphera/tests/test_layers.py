"""The layers hold: `make lint`'s import contracts (pyproject.toml, import-linter) pass on
the code as it is, and fail as soon as a lower layer imports a higher one.

The broken case runs on a copy of the packages with one bad module added, so the tree
under test is never touched. Needs no server.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ["siphera", "orgs", "messaging", "calls", "e911", "billing", "admin_portal"]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _lint(cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"], cwd=cwd, capture_output=True, text=True, timeout=300
    )


@pytest.fixture
def tree_copy(tmp_path) -> Path:
    ignore = shutil.ignore_patterns("__pycache__")
    for package in [*PACKAGES, "siphera_client"]:
        shutil.copytree(ROOT / package, tmp_path / package, ignore=ignore)
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def test_the_code_as_it_is_keeps_every_layer_contract():
    result = _lint(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_no_module_of_orgs_imports_messaging_or_calls():
    offenders = []
    for path in (ROOT / "orgs").rglob("*.py"):
        if "tests" in path.parts:
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            stripped = line.strip()
            if stripped.startswith(("from messaging", "import messaging")) or stripped.startswith(
                ("from calls", "import calls")
            ):
                offenders.append(f"{path.relative_to(ROOT)}:{number}: {stripped}")
    assert offenders == []


@pytest.mark.parametrize(
    ("module", "bad_import"),
    [
        ("orgs/services/leak.py", "from messaging.services import delivery\n"),
        ("orgs/services/late.py", "def f():\n    from calls import models\n"),
        ("siphera/leak.py", "import orgs.services.users\n"),
        ("messaging/leak.py", "from admin_portal import views\n"),
    ],
)
def test_an_import_up_the_layers_breaks_the_lint(tree_copy, module, bad_import):
    (tree_copy / module).write_text(bad_import)
    result = _lint(tree_copy)
    assert result.returncode != 0
    assert "BROKEN" in result.stdout
    assert module.replace("/", ".").removesuffix(".py") in result.stdout
