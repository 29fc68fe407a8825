"""The npe2 manifest: valid, its commands import, and it declares what the plugin offers."""

from __future__ import annotations

import subprocess
import sys
from importlib import resources

from npe2 import PluginManifest


def manifest() -> PluginManifest:
    path = resources.files("napari_itaclip").joinpath("napari.yaml")
    return PluginManifest.from_file(str(path))  # raises ValidationError when invalid


def test_npe2_validate_with_imports():
    # The command line napari's docs recommend; --imports imports every python_name.
    done = subprocess.run(
        [sys.executable, "-m", "npe2", "validate", "napari-itaclip", "--imports"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "valid" in done.stdout.lower()


def test_installed_entry_point_finds_the_manifest():
    from_distribution = PluginManifest.from_distribution("napari-itaclip")
    assert from_distribution.name == manifest().name == "napari-itaclip"


def test_contributions():
    contributions = manifest().contributions
    assert [w.display_name for w in contributions.widgets] == ["ITACLIP segmentation"]
    [reader] = contributions.readers
    assert reader.filename_patterns == ["*.itaclip", "*.itaclip.npz"]
    assert not reader.accepts_directories
    [writer] = contributions.writers
    assert writer.filename_extensions == [".itaclip"]
    assert [str(t) for t in writer.layer_types] == ["labels"]
    assert len(contributions.sample_data) >= 2
