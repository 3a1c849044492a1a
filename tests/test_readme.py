"""The README is a front page: the two commands on its first screen (CI runs both: the first on a fresh
install, the second word for word), a length read in minutes, and links between the pages that resolve."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SERVE = "python3 -m pip install . && python3 -m floodwall serve"
TEST = "python3 -m pip install -e '.[test]' && python3 -m pytest"
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def test_first_screen_has_both_commands() -> None:
    first_screen = "\n".join(ROOT.joinpath("README.md").read_text().splitlines()[:30])
    assert SERVE in first_screen
    assert TEST in first_screen


def test_the_readme_is_a_front_page() -> None:
    assert len(ROOT.joinpath("README.md").read_text().splitlines()) <= 220


def test_ci_checks_a_fresh_install_then_runs_the_readme_test_command() -> None:
    lines = [line for line in ROOT.joinpath(".ci/run").read_text().splitlines() if line and not line.startswith("#")]
    assert lines[-1] == TEST
    assert "bash .ci/fresh_install" in lines[:-1]


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"`|\*\*|\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def unfenced(page: Path) -> str:
    """A page without its fenced code blocks, where a # is not a heading."""
    return re.sub(r"^(```|~~~).*?^\1", "", page.read_text(), flags=re.S | re.M)


def prose(page: Path) -> str:
    """A page without its code, where brackets are not links."""
    return re.sub(r"`[^`\n]*`", "", unfenced(page))


def anchors(page: Path) -> set[str]:
    found: set[str] = set()
    for line in unfenced(page).splitlines():
        match = re.match(r"#{1,6}\s+(.*)", line)
        if match:
            base = slug(match.group(1))
            name, n = base, 0
            while name in found:
                n += 1
                name = f"{base}-{n}"
            found.add(name)
    return found


def test_every_link_between_the_pages_resolves() -> None:
    assert len(PAGES) >= 9, "README.md and the docs/ pages by topic"
    broken = []
    for page in PAGES:
        for target in LINK.findall(prose(page)):
            if re.match(r"[a-z]+:", target):
                continue  # another site, or mail
            path, _, anchor = target.partition("#")
            linked = (page.parent / path).resolve() if path else page
            if not linked.exists():
                broken.append(f"{page.name}: {target} (no such file)")
            elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
                broken.append(f"{page.name}: {target} (no such heading)")
    assert not broken


def test_slugs_follow_github() -> None:
    assert slug("The defense, side by side (`bench/defense.py`)") == "the-defense-side-by-side-benchdefensepy"
    assert slug("Faults (`tests/test_faults.py`)") == "faults-teststest_faultspy"
