"""The README is a guide and docs/ the reference: every relative link in them reaches a file that exists, and
every page under docs/ is reachable from the README."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)\s]*)?\)")


def _pages() -> list[Path]:
    return [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def test_every_relative_link_reaches_a_file() -> None:
    broken = [
        f"{page.relative_to(REPO)} -> {target}"
        for page in _pages()
        for target in LINK.findall(page.read_text())
        if "://" not in target and not (page.parent / target).exists()
    ]
    assert broken == []


def test_every_docs_page_is_linked_from_the_readme_or_another_page() -> None:
    linked = {
        (page.parent / t).resolve()
        for page in _pages()
        for t in LINK.findall(page.read_text())
        if "://" not in t
    }
    unreached = [p.name for p in sorted((REPO / "docs").glob("*.md")) if p.resolve() not in linked]
    assert unreached == []


def test_the_readme_stays_a_guide() -> None:
    assert len((REPO / "README.md").read_text().splitlines()) <= 250, "move reference material under docs/"
