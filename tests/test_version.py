"""The version has one source, pyproject.toml, read back through the installed metadata."""

import importlib
from importlib import metadata
from pathlib import Path

import pytest

import tfkernels as tfk

ROOT = Path(__file__).resolve().parent.parent


def test_version_is_the_installed_metadata():
    assert tfk.__version__ == metadata.version("tfkernels")


def test_installed_version_is_pyprojects():
    # Fails when the installed metadata is stale (installed from another checkout or
    # before the version was bumped): reinstall with `pip install .`.
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    with open(ROOT / "pyproject.toml", "rb") as f:
        assert tfk.__version__ == tomllib.load(f)["project"]["version"]


def test_version_without_installed_metadata(monkeypatch):
    def not_installed(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "version", not_installed)
    try:
        assert importlib.reload(tfk).__version__ == "0+unknown"
    finally:
        monkeypatch.undo()
        importlib.reload(tfk)
    assert tfk.__version__ == metadata.version("tfkernels")
