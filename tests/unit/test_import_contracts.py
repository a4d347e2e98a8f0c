"""A forbidden import breaks its contract (pyproject.toml, `[tool.importlinter]`): each rule is checked, not just
written down. That the project keeps them all, `./manage test` checks before pytest."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_imports(folder: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"], cwd=folder, capture_output=True, text=True, env={"PYTHONPATH": str(folder)}
    )


@pytest.fixture
def project_copy(tmp_path: Path) -> Path:
    for package in ("server", "sampling", "prompting", "tests", "bench"):
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__", "fixtures"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    return tmp_path


@pytest.mark.parametrize(
    ("module", "line", "contract"),
    [
        ("server/engine/scheduler.py", "import fastapi", "The engine knows nothing of HTTP"),
        ("server/engine/forward/runner.py", "from server.settings import Settings", "The engine knows nothing of HTTP"),
        ("sampling/filters.py", "from prompting import label", "sampling imports torch and nothing of ours"),
        ("prompting/labels.py", "import torch", "prompting is pure Python"),
        ("server/routes/health.py", "from tests import toy", "Product packages never import tests"),
        ("server/serving/delivery.py", "from server.routes import chat", "The server's layers"),
        ("server/state.py", "from server.serving import generation", "The server's layers"),
        ("server/routes/health.py", "import torch", "The HTTP process never imports torch"),
        ("server/engine/client.py", "from server.engine.engine import Engine", "The HTTP process never imports torch"),
    ],
)
def test_a_forbidden_import_breaks_its_contract(project_copy: Path, module: str, line: str, contract: str):
    path = project_copy / module
    path.write_text(f"{line}\n{path.read_text()}")
    result = lint_imports(project_copy)
    assert result.returncode == 1
    assert f"{contract}" in result.stdout and "BROKEN" in result.stdout
