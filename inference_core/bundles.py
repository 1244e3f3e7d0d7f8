"""Model versions as artifacts: versioned bundles with a checksummed manifest.

A bundle is a directory ``<root>/<kind>/<version>/`` — the same layout a unit keeps under
``<install root>/models/`` (docs/unit-api.md) — holding the model's files and ``manifest.json``::

    {"kind": "stt", "version": "stt-1.0.0", "created_at": "2026-11-21T06:30:00+00:00",
     "files": {"lm.arpa": {"sha256": "…", "bytes": 123}, …}, "metadata": {…}}

Kinds (``MODEL_KINDS``):

* ``stt`` — the language pack compiled from the sentence templates: JSGF grammar, n-gram LM,
  trimmed dictionary (``inference_core.stt.build_language_pack``);
* ``qa`` — the ONNX intent model (fp32 or int8), tokenizer, example embeddings and thresholds
  (``inference_core.intent_model.build_intent_model``), plus the templates it fills slots from;
* ``tts`` — the espeak-ng voice settings (``voice.json``).

Manifests are Ed25519-signed by the model registry (the rollout issue); here they are checksummed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path, PurePosixPath
from typing import Any

from inference_core.errors import ModelLoadError
from speakerops.timeutil import Clock, utc_now

logger = logging.getLogger(__name__)

MODEL_KINDS: tuple[str, ...] = ("stt", "qa", "tts")
MANIFEST = "manifest.json"

#: The versions ``speakerops models build`` makes by default, and the loop's default choice.
DEFAULT_VERSIONS: dict[str, str] = {"stt": "stt-1.0.0", "qa": "qa-1.0.0-int8", "tts": "tts-1.0.0"}


def default_templates_path() -> Path:
    """The service's shipped sentence templates (``resources/templates/en-us.ini``)."""
    return Path(str(files("resources") / "templates" / "en-us.ini"))


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True)
class Bundle:
    """A built model version on disk."""

    kind: str
    version: str
    path: Path
    manifest: dict[str, Any]

    @property
    def metadata(self) -> dict[str, Any]:
        return self.manifest.get("metadata", {})

    @property
    def artifact_bytes(self) -> int:
        return sum(f["bytes"] for f in self.manifest["files"].values())

    def file(self, name: str) -> Path:
        return self.path / name


def write_manifest(bundle_dir: Path, kind: str, version: str, metadata: dict[str, Any],
                   clock: Clock = utc_now) -> Bundle:
    """Checksum every file under ``bundle_dir`` and write ``manifest.json``.

    Raises
    ------
    ValueError
        On an unknown kind, or a file that is a symlink (a bundle holds regular files only).
    """
    if kind not in MODEL_KINDS:
        raise ValueError(f"unknown model kind {kind!r}; kinds are {', '.join(MODEL_KINDS)}")
    entries: dict[str, dict[str, Any]] = {}
    for path in sorted(bundle_dir.rglob("*")):
        rel = path.relative_to(bundle_dir).as_posix()
        if rel == MANIFEST or path.is_dir():
            continue
        if path.is_symlink():
            raise ValueError(f"{path} is a symlink; a bundle holds regular files only")
        entries[rel] = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
    manifest = {"kind": kind, "version": version, "created_at": clock().isoformat(timespec="seconds"),
                "files": entries, "metadata": metadata}
    (bundle_dir / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return Bundle(kind, version, bundle_dir, manifest)


def load_bundle(bundle_dir: Path, *, verify: bool = True) -> Bundle:
    """Read a bundle's manifest and (by default) verify every file's size and SHA-256.

    Raises
    ------
    ModelLoadError
        If the manifest is missing or unreadable, names a path outside the bundle, or a file is
        missing, of another size, or altered.
    """
    path = bundle_dir / MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        kind, version, entries = manifest["kind"], manifest["version"], manifest["files"]
    except FileNotFoundError as exc:
        raise ModelLoadError(f"no model bundle at {bundle_dir} ({MANIFEST} missing); "
                             "build one with `speakerops models build`") from exc
    except (ValueError, KeyError, TypeError) as exc:
        raise ModelLoadError(f"{path} is not a valid bundle manifest ({exc}); rebuild the bundle") from exc
    for name in entries:  # a hostile manifest is refused before any file is read
        rel = PurePosixPath(name)
        if rel.is_absolute() or ".." in rel.parts:
            raise ModelLoadError(f"{path} names {name!r}, outside the bundle; refusing it")
    root = bundle_dir.resolve()
    for found in bundle_dir.rglob("*"):  # a symlink could smuggle any file of this machine into the bundle
        if found.is_symlink():
            target = found.resolve()
            where = "outside the bundle" if not target.is_relative_to(root) else "inside the bundle"
            raise ModelLoadError(f"bundle {version}: {found.relative_to(bundle_dir)} is a symlink (to {where}); "
                                 "a bundle holds regular files only — rebuild it without links")
    if verify:
        for name, entry in entries.items():
            target = bundle_dir / PurePosixPath(name)
            if not target.is_file():
                raise ModelLoadError(f"bundle {version}: file {name} is missing; rebuild or reinstall it")
            if target.stat().st_size != entry["bytes"] or sha256_file(target) != entry["sha256"]:
                raise ModelLoadError(f"bundle {version}: file {name} does not match its SHA-256 in the "
                                     "manifest (altered or partly copied); reinstall the bundle")
    return Bundle(kind, version, bundle_dir, manifest)


def bundle_dir(root: Path, kind: str, version: str) -> Path:
    return Path(root) / kind / version


def list_bundles(root: Path) -> list[Bundle]:
    """Every bundle under ``root`` (unverified), by kind then version."""
    out = []
    for kind in MODEL_KINDS:
        for d in sorted((Path(root) / kind).glob("*")):
            if (d / MANIFEST).is_file():
                try:
                    out.append(load_bundle(d, verify=False))
                except ModelLoadError as exc:
                    logger.warning("skipping %s: %s", d, exc)
    return out


def _fresh_dir(root: Path, kind: str, version: str, overwrite: bool) -> Path:
    target = bundle_dir(root, kind, version)
    if target.exists():
        if not overwrite:
            raise FileExistsError(f"bundle {kind}/{version} already exists at {target}; "
                                  "choose another version or pass overwrite")
        shutil.rmtree(target)
    target.mkdir(parents=True)
    return target


def build_stt_bundle(root: Path, version: str, templates_path: Path | None = None, *,
                     holdout: tuple[str, ...] = (), overwrite: bool = False, clock: Clock = utc_now) -> Bundle:
    """Compile the templates into an STT language pack bundle (grammar, n-gram LM, dictionary)."""
    from inference_core.stt import build_language_pack
    from inference_core.templates import TemplateSet

    templates_path = templates_path or default_templates_path()
    target = _fresh_dir(root, "stt", version, overwrite)
    shutil.copyfile(templates_path, target / "templates.ini")
    build_language_pack(TemplateSet.load(templates_path), target, holdout=holdout)
    return write_manifest(target, "stt", version, {"templates_sha256": sha256_file(templates_path),
                                                   "holdout": len(holdout)}, clock)


def build_qa_bundle(root: Path, version: str, templates_path: Path | None = None, *, quantize: bool = True,
                    overwrite: bool = False, clock: Clock = utc_now) -> Bundle:
    """Export and (optionally) int8-quantize the intent model into a QA bundle."""
    from inference_core.intent_model import build_intent_model
    from inference_core.templates import TemplateSet

    templates_path = templates_path or default_templates_path()
    target = _fresh_dir(root, "qa", version, overwrite)
    shutil.copyfile(templates_path, target / "templates.ini")
    build_intent_model(TemplateSet.load(templates_path), target, quantize=quantize)
    return write_manifest(target, "qa", version, {"quantized": quantize,
                                                  "templates_sha256": sha256_file(templates_path)}, clock)


def build_tts_bundle(root: Path, version: str, *, voice: str = "en-us", speed_wpm: int = 165, pitch: int = 50,
                     overwrite: bool = False, clock: Clock = utc_now) -> Bundle:
    """Write a TTS bundle: the espeak-ng voice settings."""
    target = _fresh_dir(root, "tts", version, overwrite)
    settings = {"engine": "espeak-ng", "voice": voice, "speed_wpm": speed_wpm, "pitch": pitch}
    (target / "voice.json").write_text(json.dumps(settings, indent=2) + "\n", encoding="utf-8")
    return write_manifest(target, "tts", version, settings, clock)


def build_default_bundles(root: Path, *, overwrite: bool = False, clock: Clock = utc_now) -> list[Bundle]:
    """Build the default versions (:data:`DEFAULT_VERSIONS`) plus the fp32 QA variant; existing
    bundles are kept unless ``overwrite``."""
    built = []
    jobs = [
        ("stt", DEFAULT_VERSIONS["stt"], lambda: build_stt_bundle(root, DEFAULT_VERSIONS["stt"], overwrite=overwrite,
                                                                   clock=clock)),
        ("qa", DEFAULT_VERSIONS["qa"], lambda: build_qa_bundle(root, DEFAULT_VERSIONS["qa"], quantize=True,
                                                                overwrite=overwrite, clock=clock)),
        ("qa", "qa-1.0.0-fp32", lambda: build_qa_bundle(root, "qa-1.0.0-fp32", quantize=False,
                                                         overwrite=overwrite, clock=clock)),
        ("tts", DEFAULT_VERSIONS["tts"], lambda: build_tts_bundle(root, DEFAULT_VERSIONS["tts"], overwrite=overwrite,
                                                                   clock=clock)),
    ]
    for kind, version, job in jobs:
        if not overwrite and (bundle_dir(root, kind, version) / MANIFEST).is_file():
            built.append(load_bundle(bundle_dir(root, kind, version), verify=False))
            continue
        logger.info("building %s bundle %s", kind, version)
        built.append(job())
    return built
