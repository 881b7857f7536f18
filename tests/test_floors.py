"""The version floors in pyproject.toml are the ones CI's lowest leg installs and runs."""

from __future__ import annotations

import importlib.metadata
import os
import re
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def floors() -> dict[str, str]:
    """Each dependency's floor (its ``>=`` bound), from pyproject.toml: the package's, the
    test extra's and the docs extra's (``make test`` builds the documentation too)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    found = {}
    for spec in [*project["dependencies"], *extras["test"], *extras["docs"]]:
        match = re.match(r"([A-Za-z0-9_.-]+)(\[[^]]*\])?>=([0-9.]+)", spec)
        assert match, f"{spec!r} has no floor"
        found[match.group(1).lower()] = match.group(3)
    return found


def pins() -> dict[str, str]:
    lines = (ROOT / ".ci" / "floors.txt").read_text().splitlines()
    pairs = (line.split("==") for line in lines if line.strip() and not line.startswith("#"))
    return {name.strip().lower(): version.strip() for name, version in pairs}


def test_the_floors_file_pins_exactly_the_declared_floors() -> None:
    assert pins() == floors()


def test_the_python_floor_is_the_lowest_leg() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["requires-python"] == ">=3.11"
    if os.environ.get("CACHEKIT_FLOORS"):
        assert sys.version_info[:2] == (3, 11)


@pytest.mark.skipif(not os.environ.get("CACHEKIT_FLOORS"), reason="not the lowest leg")
def test_this_leg_runs_the_floors() -> None:
    installed = {name: importlib.metadata.version(name) for name in pins()}
    assert installed == pins()
