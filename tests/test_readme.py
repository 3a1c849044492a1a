"""The README's first screen holds the two commands, and CI runs the test one word for word."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SERVE = "python3 -m pip install . && python3 -m floodwall serve"
TEST = "python3 -m pip install -e '.[test]' && python3 -m pytest"


def test_first_screen_has_both_commands() -> None:
    first_screen = "\n".join(ROOT.joinpath("README.md").read_text().splitlines()[:30])
    assert SERVE in first_screen
    assert TEST in first_screen


def test_ci_runs_the_readme_test_command() -> None:
    lines = [line for line in ROOT.joinpath(".ci/run").read_text().splitlines() if line and not line.startswith("#")]
    assert lines[-1] == TEST
