"""Bundles built once per session from the shared tiny model (tests/conftest.py ``hf_model``), for every shipped target."""

from __future__ import annotations

import shutil

import pytest

from slimedge.bundle import build_bundle
from slimedge.targets import shipped_names


@pytest.fixture(scope="session")
def bundles(hf_model, tmp_path_factory):
    """target name -> bundle folder (treat as read-only; copy before damaging)."""
    root = tmp_path_factory.mktemp("bundles")
    return {name: build_bundle(hf_model, name, root / name, archive=(name == "cpu")) for name in shipped_names()}


@pytest.fixture
def bundle_copy(bundles, tmp_path):
    def copy(name: str = "cpu"):
        dst = tmp_path / f"{name}-copy"
        shutil.copytree(bundles[name], dst)
        return dst
    return copy
