"""ruff and mypy --strict stay clean: run as part of the suite so CI holds the line."""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_ruff() -> None:
    result = subprocess.run([sys.executable, "-m", "ruff", "check", "src", "tests", "bench"], cwd=ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_strict() -> None:
    result = subprocess.run([sys.executable, "-m", "mypy"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_layers_only_look_down() -> None:
    """The import-linter contracts in pyproject.toml: layers, independent domain packages, no cycle."""
    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    assert contracts and not any("ignore_imports" in c for c in contracts)  # an exception is a hole
    result = subprocess.run([sys.executable, "-m", "importlinter.cli", "--no-cache"], cwd=ROOT, capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_no_module_of_ours_is_imported_by_name() -> None:
    """importlib or __import__ of our own modules would hide an import from the contracts above (the
    simulators check optional third-party extras with import_module; granian loads the app factories named
    in server.py, the wiring)."""
    found = []
    for path in (ROOT / "src" / "floodwall").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call):
                continue
            name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            if name == "__import__" or (name == "import_module" and not _third_party(node.args)):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not found


def _third_party(args: list[ast.expr]) -> bool:
    """An argument that is not a string naming one of ours (a literal, or a name bound to other packages')."""
    return bool(args) and not (isinstance(args[0], ast.Constant) and str(args[0].value).startswith("floodwall"))


def test_only_the_entry_points_import_the_simulators_and_lazily() -> None:
    for path in (ROOT / "src" / "floodwall").rglob("*.py"):
        if "sim" in path.relative_to(ROOT / "src" / "floodwall").parts:
            continue
        tree = ast.parse(path.read_text())
        top_level = {id(node) for node in tree.body}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("floodwall.sim"):
                assert path.name in ("cli.py", "app.py"), path
                assert id(node) not in top_level, f"{path.name} imports {node.module} at start-up"


def test_the_architecture_page_matches_the_contract() -> None:
    """docs/architecture.md lists the contract's layers as they are, and names every package."""
    text = (ROOT / "docs" / "architecture.md").read_text()
    documented = [line.strip() for line in text.split("```layers\n", 1)[1].split("```", 1)[0].splitlines()]
    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    (layers,) = [c["layers"] for c in contracts if c["type"] == "layers"]
    assert [line for line in documented if line] == layers
    source = ROOT / "src" / "floodwall"
    packages = sorted(p.name for p in source.iterdir() if (p / "__init__.py").exists())
    assert packages and not [name for name in packages if f"`{name}/`" not in text]
