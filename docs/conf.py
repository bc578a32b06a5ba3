"""Sphinx configuration of the sparsegat documentation.

Build it from the repository root (``pip install ".[docs]"`` first)::

    python -m sphinx -W --keep-going -b html docs docs/_build/html

The Markdown pages of ``docs/`` are read by MyST; the API reference
(``docs/api/``) is rendered from the numpydoc docstrings by autodoc.
"""

from __future__ import annotations

import sparsegat

project = "sparsegat"
author = "the sparsegat developers"
copyright = "2026, the sparsegat developers"
release = sparsegat.__version__
version = ".".join(release.split(".")[:2])

extensions = [
    "sphinx.ext.autodoc",
    "numpydoc",
    "myst_parser",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]

# MyST: heading anchors so that links such as ``nn.md#design-choices`` resolve.
myst_heading_anchors = 3

# autodoc / numpydoc: signatures from the code, descriptions from the docstrings.
autodoc_member_order = "bysource"
autodoc_typehints = "none"
autodoc_default_options = {"members": True, "show-inheritance": False}
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = False

html_theme = "alabaster"
html_title = f"sparsegat {release}"
html_static_path: list[str] = []
