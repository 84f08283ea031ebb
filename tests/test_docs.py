"""The README's links resolve: Sphinx checks the links of docs/ (`make docs`), but only part of the README is in it."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
LINK = re.compile(r"\]\(([^)\s]+)\)")


def _anchors(markdown: str) -> set[str]:
    """The anchors GitHub and MyST give the headings of a Markdown text."""
    headings = re.findall(r"^#{1,6} (.+)$", re.sub(r"```.*?```", "", markdown, flags=re.S), flags=re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


def test_readme_links_resolve() -> None:
    text = README.read_text()
    broken = []
    for target in LINK.findall(text):
        if "://" in target:
            continue
        path, _, anchor = target.partition("#")
        page = (ROOT / path) if path else README
        if not page.is_file():
            broken.append(target)
        elif anchor and page.suffix == ".md" and anchor not in _anchors(page.read_text()):
            broken.append(target)
    assert not broken, f"README.md links to what does not exist: {broken}"


def test_readme_keeps_the_two_commands() -> None:
    text = README.read_text()
    assert "make demo" in text and "make test" in text
