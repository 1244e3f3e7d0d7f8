"""Hostile bundles are refused before anything is read, copied or signed: manifest paths that are
absolute or climb out with ``..``, and symlinks (to outside or inside the bundle)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from inference_core.bundles import load_bundle, write_manifest
from inference_core.errors import ModelLoadError


def _bundle(root: Path) -> Path:
    d = root / "stt" / "stt-9.0.0"
    d.mkdir(parents=True)
    (d / "lm.arpa").write_text("\\data\\\n")
    write_manifest(d, "stt", "stt-9.0.0", {})
    return d


def test_a_clean_bundle_loads(tmp_path: Path) -> None:
    assert load_bundle(_bundle(tmp_path)).version == "stt-9.0.0"


@pytest.mark.parametrize("name", ["/etc/passwd", "../../outside.txt", "sub/../../x"])
def test_manifest_paths_outside_the_bundle_are_refused(tmp_path: Path, name: str) -> None:
    d = _bundle(tmp_path)
    manifest = json.loads((d / "manifest.json").read_text())
    manifest["files"][name] = {"sha256": "0" * 64, "bytes": 1}
    (d / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelLoadError, match="outside the bundle"):
        load_bundle(d, verify=False)


@pytest.mark.parametrize("inside", [False, True])
def test_symlinks_are_refused(tmp_path: Path, inside: bool) -> None:
    d = _bundle(tmp_path)
    secret = tmp_path / "secret.txt"
    secret.write_text("root:x:0:0")
    os.symlink("lm.arpa" if inside else secret, d / "weights.bin")
    manifest = json.loads((d / "manifest.json").read_text())
    manifest["files"]["weights.bin"] = {"sha256": "0" * 64, "bytes": 10}
    (d / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelLoadError, match="weights.bin is a symlink .*" + ("inside" if inside else "outside")):
        load_bundle(d)
    with pytest.raises(ValueError, match="symlink"):
        write_manifest(d, "stt", "stt-9.0.0", {})
