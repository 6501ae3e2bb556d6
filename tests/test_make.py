"""The README's two commands, `make run` and `make test`, and CI's use of the second.

Only dry runs (`make -n`): make prints what it would run and runs nothing, so no venv
is built and no node starts. `-B` shows the whole plan, as on a fresh clone; the stamp
logic is checked in a temporary copy of the Makefile and pyproject.toml, whose
timestamps the test may move.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CLUSTER_UP = "kvs cluster up --nodes 3"
INSTALL = ".venv/bin/python -m pip install --quiet -e '.[test]'"


def dry_run(directory: Path, target: str, *flags: str) -> list[str]:
    # --no-print-directory: under `make test` this make is nested and would otherwise print
    # "Entering directory" lines around the recipe.
    done = subprocess.run(["make", "-n", "--no-print-directory", *flags, target], cwd=directory,
                          capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


def venv_step(lines: list[str]) -> list[str]:
    """The lines of the shared venv step: (re)create .venv if it has no pip, install, stamp."""
    end = lines.index("touch .venv/.installed")
    return lines[:end + 1]


def test_run_installs_then_starts_a_three_node_cluster() -> None:
    lines = dry_run(ROOT, "run", "-B")
    assert lines[-1] == CLUSTER_UP
    step = venv_step(lines)
    assert lines == [*step, CLUSTER_UP]
    assert "python3 -m venv .venv" in step[0] and step[0].startswith(".venv/bin/python -m pip --version")
    assert INSTALL in step


def test_test_installs_then_runs_ruff_pytest_and_the_integration_test() -> None:
    lines = dry_run(ROOT, "test", "-B")
    step = venv_step(lines)
    assert step == venv_step(dry_run(ROOT, "run", "-B"))  # one venv step, shared
    ruff, pytest_, integration = lines[len(step):]
    assert (ruff, pytest_) == ("ruff check kvs tests bench", "pytest -q")
    assert re.fullmatch(r"PYTHON=/\S+/\.venv/bin/python \./integration_test\.sh", integration)


@pytest.fixture
def copy(tmp_path: Path) -> Path:
    for name in ("Makefile", "pyproject.toml"):
        shutil.copy2(ROOT / name, tmp_path / name)
    return tmp_path


def test_the_venv_step_runs_when_missing_or_stale_only(copy: Path) -> None:
    fresh = dry_run(copy, "run")
    assert INSTALL in fresh and fresh[-1] == CLUSTER_UP

    stamp = copy / ".venv" / ".installed"
    stamp.parent.mkdir()
    stamp.touch()
    installed_at = (copy / "pyproject.toml").stat().st_mtime + 10
    os.utime(stamp, (installed_at, installed_at))
    assert dry_run(copy, "run") == [CLUSTER_UP]
    assert dry_run(copy, "test")[0] == "ruff check kvs tests bench"

    os.utime(copy / "pyproject.toml", (installed_at + 10, installed_at + 10))  # edited since
    assert dry_run(copy, "run") == fresh
    assert INSTALL in dry_run(copy, "test")


def _commands(script: str) -> list[str]:
    return [line.strip() for line in script.splitlines()
            if line.strip() and not line.lstrip().startswith("#")]


def test_ci_builds_a_fresh_venv_then_runs_make_test() -> None:
    commands = _commands((ROOT / ".ci" / "run").read_text())
    assert commands[-1] == "make test"
    fresh = commands.index("rm -rf .venv")
    assert [c for c in commands[fresh + 1:] if not c.startswith("echo ")] == ["make venv", "make test"]
    # nothing runs a check beside make: CI cannot drift from the README's command
    assert not [c for c in commands if re.match(r"(pytest|ruff|\./integration_test\.sh)\b", c)]


def test_readme_opens_with_the_two_commands() -> None:
    readme = (ROOT / "README.md").read_text()
    title, rest = readme.split("\n", 1)
    assert title == "# kvs"
    before, block, _ = rest.split("```", 2)
    assert before.strip() == ""  # nothing between the title and the commands
    lines = block.removeprefix("sh\n").strip().splitlines()
    assert [line.split("#")[0].strip() for line in lines] == ["make run", "make test"]
    assert "./kvs-cluster/" in lines[0]
