"""Sphinx configuration of the documentation (`make docs`; the tests build it with warnings as errors)."""

project = "seqrerank"
author = "seqrerank developers"
extensions = ["myst_parser"]
source_suffix = {".md": "markdown"}
myst_heading_anchors = 4  # `page.md#changed-defaults` links resolve to the headings' GitHub-style anchors
exclude_patterns = ["_build"]
html_theme = "alabaster"
html_title = "seqrerank"
