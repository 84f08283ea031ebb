"""Sphinx configuration: the manual in Markdown (MyST), the API from docstrings, the example notebooks as saved.

The notebooks are never executed here: ``make test`` already runs them under nbval, and a docs build must be
quick and need neither a kernel nor a cluster. Nothing is fetched from the network (no intersphinx).
"""

from __future__ import annotations

import sys
from pathlib import Path

from sphinx.util import logging

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
sys.path.insert(0, str(ROOT))

project = "nbflow"
author = "nbflow contributors"
copyright = "nbflow contributors"

# napoleon: methods that inherit their docstring (``Future.result`` from ``concurrent.futures``) use Google style.
extensions = ["myst_nb", "sphinx.ext.autodoc", "sphinx.ext.napoleon"]
exclude_patterns = ["_build"]

# Markdown: `## Heading` gets an anchor that `page.md#heading` links can name; a link to a missing page or
# anchor is a warning, so `make test` (-W) fails on it.
myst_heading_anchors = 3

# Example notebooks: rendered with the outputs they were saved with.
nb_execution_mode = "off"

autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True, "show-inheritance": True}

html_theme = "alabaster"
html_title = "nbflow"
html_theme_options = {"page_width": "1200px", "sidebar_width": "240px"}   # the code blocks are 120 columns
html_static_path: list[str] = []


def _check_examples(app: object) -> None:
    """Warn (an error under -W) when an example notebook has no page here, or a page lost its notebook."""
    log = logging.getLogger("nbflow.docs")
    links = {p.name: p for p in (DOCS / "examples").glob("*.ipynb")}
    for nb in sorted((ROOT / "example_notebooks").glob("*.ipynb")):
        if nb.name not in links:
            log.warning("%s has no page: ln -s ../../example_notebooks/%s docs/examples/", nb.name, nb.name)
    for name, link in sorted(links.items()):
        if not link.exists():
            log.warning("docs/examples/%s points at no notebook of example_notebooks/", name)


def setup(app: object) -> None:
    """Hook the example check into the build."""
    app.connect("builder-inited", _check_examples)
