"""The version is written once (``avalanche_sdlora.__version__``): pyproject.toml reads it, the changelog's newest
entry names it, and the LICENSE is the one pyproject declares."""

import re
from pathlib import Path

import pytest

import avalanche_sdlora

ROOT = Path(__file__).resolve().parent.parent


def test_pyproject_reads_the_package_version():
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" not in project["project"] and "version" in project["project"]["dynamic"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "avalanche_sdlora.__version__"}
    assert project["project"]["license"] == {"text": "MIT"}


def test_setuptools_resolves_the_same_version():
    config = pytest.importorskip("setuptools.config.pyprojecttoml")
    assert config.read_configuration(ROOT / "pyproject.toml")["project"]["version"] == avalanche_sdlora.__version__


def test_changelog_leads_with_this_version_and_the_license_is_mit():
    first = re.search(r"^## (\S+)", (ROOT / "CHANGELOG.md").read_text(), flags=re.M)
    assert first and first.group(1) == avalanche_sdlora.__version__
    assert (ROOT / "LICENSE").read_text().startswith("MIT License\n")
