"""The README is a front door and the rest is a documentation site: Sphinx builds it with warnings as errors
(a broken cross-page link or a malformed page fails), every page the README points to exists, and every command of
the quick start is a Makefile target whose work a test runs."""

from __future__ import annotations

import re
import subprocess
import sys

from conftest import REPO

# What each quick-start command runs, and the test that runs the same work (`make run` is `dvc repro`, ...).
COVERED = {
    "make run": ("dvc repro", "tests/test_dvc_pipeline.py"),
    "make test": ("pytest", ".ci/run"),
    "make report": ("dvc repro report", "tests/test_dvc_pipeline.py"),
    "make compare": ("stages.cli compare", "tests/test_pipeline.py"),
    "make plots": ("stages.cli plots", "tests/test_dvc_pipeline.py"),
    "make ui": ("stages.cli ui", "tests/test_pipeline.py"),
    "make serve": ("serving_guard:scoring_app", "tests/test_serving_limits.py"),
}


def test_the_docs_build_with_warnings_as_errors(tmp_path):
    done = subprocess.run([sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html", "docs",
                           str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    pages = {p.stem for p in (REPO / "docs").glob("*.md")}
    assert {p.stem for p in tmp_path.glob("*.html")} >= pages  # every page is in the toctree and built


def test_the_readme_is_a_front_door_whose_links_exist():
    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) <= 80, "the README is one or two screens; the rest goes to docs/"
    links = re.findall(r"\]\((docs/[^)#]+)", readme)
    assert len(links) >= 8 and all((REPO / link).exists() for link in links), links


def test_every_quick_start_command_is_a_target_that_a_test_covers():
    quick = (REPO / "docs" / "quickstart.md").read_text()
    commands = {m.group(1) for block in re.findall(r"```bash\n(.*?)```", quick, re.S)
                for m in re.finditer(r"^(make \w+)", block, re.M)}  # fmt: skip
    assert commands == set(COVERED), commands
    makefile = (REPO / "Makefile").read_text()
    for command, (work, test) in COVERED.items():
        target = command.split()[1]
        recipe = re.search(rf"^{target}:.*\n((?:\t.*\n)+)", makefile, re.M)
        assert recipe and work in recipe.group(1), f"`{command}` does not run {work!r}"
        assert (REPO / test).exists(), test
