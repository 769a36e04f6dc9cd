"""The project's own set-up files agree with each other: pins, entry points, the two README commands."""

from __future__ import annotations

import importlib
import re
import shlex
import tomllib

import yaml
from conftest import REPO

from stages.common import build_parser


def pins(lines: list[str]) -> dict[str, str]:
    found = {}
    for line in lines:
        line = line.split("#")[0].strip()
        if m := re.fullmatch(r"([A-Za-z0-9_.\-]+)==([\w.+\-]+)", line):
            found[m.group(1).lower()] = m.group(2)
    return found


def test_every_requirement_is_pinned():
    for name in ("requirements.txt", "requirements-dev.txt"):
        lines = [ln.split("#")[0].strip() for ln in (REPO / name).read_text().splitlines()]
        lines = [ln for ln in lines if ln]
        assert lines and all("==" in ln for ln in lines), f"{name}: unpinned {lines}"
    runtime = pins((REPO / "requirements.txt").read_text().splitlines())
    assert runtime["torch"] == "2.14.1" and runtime["torchvision"] == "0.29.1"
    assert runtime["mlflow"].startswith("3.17.") and runtime["dvc"].startswith("3.67.")


def test_conda_yaml_mirrors_requirements():
    conda = yaml.safe_load((REPO / "conda.yaml").read_text())
    assert "python=3.11" in conda["dependencies"]
    pip_section = next(d["pip"] for d in conda["dependencies"] if isinstance(d, dict))
    assert pins(pip_section) == pins((REPO / "requirements.txt").read_text().splitlines())


def test_mlproject_entry_points_use_real_flags():
    project = yaml.safe_load((REPO / "MLproject").read_text())
    assert (REPO / project["conda_env"]).exists()
    for name, entry in project["entry_points"].items():
        command = entry["command"]
        if name == "main":
            assert command == "dvc repro"
            continue
        defaults = {k: v["default"] for k, v in entry.get("parameters", {}).items()}
        argv = shlex.split(command.format(**defaults))
        module = argv[2]
        assert (REPO / (module.replace(".", "/") + ".py")).exists(), module
        flags = argv[4:] if module == "stages.cli" else argv[3:]
        stage_parser = build_parser("t", "t")
        add_args = getattr(importlib.import_module(module), "add_args", None)
        if add_args:
            add_args(stage_parser)
        stage_parser.parse_args(flags)  # raises SystemExit on an unknown flag or bad value


def test_readme_has_the_two_commands_and_ci_runs_the_test_one():
    readme = (REPO / "README.md").read_text()
    assert "make run" in readme and "make test" in readme
    assert "make test" in (REPO / ".ci" / "run").read_text()
    makefile = (REPO / "Makefile").read_text()
    assert re.search(r"^run:", makefile, re.M) and re.search(r"^test:", makefile, re.M)


def test_console_script():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert project["project"]["scripts"]["recsys"] == "stages.cli:main"
