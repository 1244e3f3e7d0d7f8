"""The model registry: signed bundles, MLflow-style aliases, offline evaluations and the rollout gate.

* :func:`import_bundle` verifies a bundle's checksums (``inference_core.bundles.load_bundle``),
  copies it into ``<data_dir>/registry/<kind>/<version>/``, signs the copy's manifest
  (:mod:`fleet.signing`, ``manifest.sig``) and records a :class:`~fleet.models.ModelVersion`. The
  same content again is a no-op; the same version with other files is refused.
* Aliases (``production``, ``canary``, …) point at one version of a kind (MLflow moved from stages
  to aliases, FIELD_NOTES); :func:`resolve` accepts an alias or a version.
* :func:`attach_evaluation` stores a report of ``speakerops evaluate --json`` /
  ``inference_core.evaluate.evaluate`` and keeps its verdicts for the requirements that concern the
  version's kind (:data:`KIND_REQUIREMENTS`), reusing the report's own pass/fail
  (``summary.requirements``; targets in ``inference_core.pipeline.REQUIREMENTS``: STT accuracy
  ≥ 90 % (WER ≤ 0.10), answer accuracy ≥ 80 %, MOS ≥ 4.0, server ≤ 2 s, end to end ≤ 3 s).
* :func:`rollout_gate` allows a version whose evaluation passed; a failed or missing evaluation
  is refused unless :func:`override_gate` recorded an operator's written reason (in the audit
  trail too).

Service functions take the session first and never commit.
"""

from __future__ import annotations

import hashlib
import logging
import math
import shutil
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from fleet.errors import RegistryError
from fleet.models import MODEL_KINDS, ModelAlias, ModelVersion
from fleet.signing import SIGNATURE_FILE, Signer, canonical_manifest_bytes
from speakerops import audit
from speakerops.timeutil import Clock, utc_now

logger = logging.getLogger(__name__)

#: The evaluation requirements (keys of ``summary.requirements``) that gate each kind: the
#: latency ones concern every kind (a slower model of any kind slows the answer).
KIND_REQUIREMENTS: dict[str, tuple[str, ...]] = {
    "stt": ("stt_accuracy", "server_latency", "end_to_end_latency"),
    "qa": ("answer_accuracy", "server_latency", "end_to_end_latency"),
    "tts": ("mos", "server_latency", "end_to_end_latency"),
}


def registry_root(data_dir: Path) -> Path:
    """Where stored bundles live: ``<data_dir>/registry`` (``<kind>/<version>/`` below it)."""
    return Path(data_dir) / "registry"


@dataclass(frozen=True)
class GateDecision:
    """Whether a version may be rolled out, and why.

    ``failed`` lists the requirement verdicts that failed (``{"key", "label", "target",
    "value", "passed"}``); ``overridden`` is True when an operator's override allows it anyway.
    """

    kind: str
    version: str
    allowed: bool
    reason: str
    failed: list[dict[str, Any]] = field(default_factory=list)
    overridden: bool = False
    override_reason: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "version": self.version, "allowed": self.allowed, "reason": self.reason,
                "failed": self.failed, "overridden": self.overridden, "override_reason": self.override_reason}


def _content_digest(files: dict[str, Any]) -> str:
    """Identity of a bundle's content: its files and their checksums (not its build time)."""
    body = {k: {"sha256": v["sha256"], "bytes": v["bytes"]} for k, v in files.items()}
    return hashlib.sha256(canonical_manifest_bytes(body)).hexdigest()


def import_bundle(session: Session, path: Path, store_dir: Path, signer: Signer, clock: Clock = utc_now, *,
                  notes: str = "", actor: str | None = None) -> ModelVersion:
    """Verify, copy, sign and record the bundle at ``path``.

    Parameters
    ----------
    path
        A bundle directory (``manifest.json`` + files; ``speakerops models build`` makes them).
    store_dir
        The registry root (:func:`registry_root`); the copy goes to ``<store_dir>/<kind>/<version>/``.
    signer
        Signs the stored copy's manifest (``fleet.signing.KeyStore.signer()``).

    Returns
    -------
    ModelVersion
        The new row, or the existing one when the same content was imported before.

    Raises
    ------
    RegistryError
        The bundle is unreadable or a file does not match its checksum, or the version exists
        with other content.
    """
    from inference_core.bundles import load_bundle
    from inference_core.errors import ModelLoadError

    try:
        bundle = load_bundle(Path(path), verify=True)
    except ModelLoadError as exc:
        raise RegistryError(f"cannot import {path}: {exc}") from exc
    if bundle.kind not in MODEL_KINDS:
        raise RegistryError(f"{path}: unknown model kind {bundle.kind!r}; kinds are {', '.join(MODEL_KINDS)}")
    files = dict(bundle.manifest["files"])
    existing = session.scalar(select(ModelVersion).where(ModelVersion.kind == bundle.kind,
                                                         ModelVersion.version == bundle.version))
    if existing is not None:
        if _content_digest(existing.files) == _content_digest(files):
            logger.info("%s/%s is already in the registry with the same content", bundle.kind, bundle.version)
            return existing
        raise RegistryError(f"{bundle.kind} version {bundle.version} is already in the registry with other "
                            "content; give the new bundle a new version (versions are immutable)")
    dest = Path(store_dir) / bundle.kind / bundle.version
    if dest.exists():
        shutil.rmtree(dest)  # left by an import whose transaction did not commit
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(bundle.path, dest, ignore=shutil.ignore_patterns(SIGNATURE_FILE), symlinks=False)
    try:
        stored = load_bundle(dest, verify=True)
    except ModelLoadError as exc:
        shutil.rmtree(dest, ignore_errors=True)
        raise RegistryError(f"the copy of {path} in {dest} does not verify: {exc}") from exc
    sig = signer.sign_bundle(dest)
    built_at = None
    if stored.manifest.get("created_at"):
        try:
            built_at = datetime.fromisoformat(stored.manifest["created_at"])
            built_at = built_at if built_at.tzinfo else None
        except ValueError:
            built_at = None
    who = actor or audit.current_actor(session)
    mv = ModelVersion(kind=bundle.kind, version=bundle.version, files=files, artifact_bytes=stored.artifact_bytes,
                      manifest_sha256=sig.manifest_sha256, signature=sig.signature_b64, key_id=sig.key_id,
                      notes=notes, bundle_metadata=dict(stored.manifest.get("metadata") or {}), built_at=built_at,
                      created_at=clock(), created_by=who, source_path=str(dest))
    session.add(mv)
    session.flush()
    audit.record(session, "model.import", "model_version", f"{mv.kind}/{mv.version}", before=None,
                 after={"files": len(files), "artifact_bytes": mv.artifact_bytes, "key_id": mv.key_id,
                        "manifest_sha256": mv.manifest_sha256, "notes": notes}, actor=who, clock=clock)
    logger.info("imported %s/%s (%d files, %d bytes), signed with %s", mv.kind, mv.version, len(files),
                mv.artifact_bytes, mv.key_id)
    return mv


def list_versions(session: Session, kind: str | None = None) -> list[ModelVersion]:
    """Registered versions, by kind then newest first."""
    q = select(ModelVersion).order_by(ModelVersion.kind, ModelVersion.created_at.desc(), ModelVersion.id.desc())
    if kind is not None:
        q = q.where(ModelVersion.kind == kind)
    return list(session.scalars(q))


def get_version(session: Session, version: str | ModelVersion, kind: str | None = None) -> ModelVersion:
    """The registered ``version`` (of ``kind`` if given; version names are unique per kind).
    A :class:`ModelVersion` is returned as it is.

    Raises
    ------
    RegistryError
        Unknown, or the name is used by more than one kind and ``kind`` is not given.
    """
    if isinstance(version, ModelVersion):
        return version
    q = select(ModelVersion).where(ModelVersion.version == version)
    if kind is not None:
        q = q.where(ModelVersion.kind == kind)
    rows = list(session.scalars(q))
    if not rows:
        raise RegistryError(f"no model version {version!r}{' of kind ' + kind if kind else ''} in the registry; "
                            "`speakerops models list` shows what is there, `models import` adds one")
    if len(rows) > 1:
        raise RegistryError(f"version {version!r} exists for kinds {', '.join(r.kind for r in rows)}; say which kind")
    return rows[0]


def aliases_of(session: Session, mv: ModelVersion) -> list[str]:
    return list(session.scalars(select(ModelAlias.alias).where(ModelAlias.version_id == mv.id)
                                .order_by(ModelAlias.alias)))


def set_alias(session: Session, kind: str, alias: str, version: str, actor: str | None = None,
              clock: Clock = utc_now) -> ModelAlias:
    """Point ``alias`` of ``kind`` at ``version`` (created or moved; audited).

    Raises
    ------
    RegistryError
        Unknown kind or version, or an alias name that looks like a version or is empty.
    """
    if kind not in MODEL_KINDS:
        raise RegistryError(f"unknown model kind {kind!r}; kinds are {', '.join(MODEL_KINDS)}")
    alias = alias.strip()
    if not alias or not alias.replace("-", "").replace("_", "").isalnum() or alias[0].isdigit():
        raise RegistryError(f"alias {alias!r} must be a word (letters, digits, - and _), e.g. production")
    mv = get_version(session, version, kind)
    row = session.scalar(select(ModelAlias).where(ModelAlias.kind == kind, ModelAlias.alias == alias))
    before = None
    who = actor or audit.current_actor(session)
    if row is None:
        row = ModelAlias(kind=kind, alias=alias, version_id=mv.id, updated_at=clock(), updated_by=who)
        session.add(row)
    else:
        before = {"version": row.version.version}
        row.version_id, row.updated_at, row.updated_by = mv.id, clock(), who
    session.flush()
    session.expire(row, ["version"])
    audit.record(session, "model.alias", "model_alias", f"{kind}@{alias}", before=before,
                 after={"version": mv.version}, actor=who, clock=clock)
    return row


def resolve(session: Session, kind: str, name: str) -> ModelVersion:
    """An alias (``production``) or a version name of ``kind`` → the version.

    Raises
    ------
    RegistryError
        Neither an alias nor a version of that kind.
    """
    row = session.scalar(select(ModelAlias).where(ModelAlias.kind == kind, ModelAlias.alias == name))
    if row is not None:
        return row.version
    return get_version(session, name, kind)


def _regression_verdicts(regression: Any, wanted: tuple[str, ...]) -> list[dict[str, Any]]:
    """Gate rows from the field regression sets (``report["regression"] = {name: evaluate report}``,
    made of technicians' field cases, ``fleet.workbench_actions.add_regression_case``): their
    recognition requirements (STT and answer accuracy) must hold on the field cases too."""
    rows: list[dict[str, Any]] = []
    if not isinstance(regression, dict):
        return rows
    for name, rep in sorted(regression.items()):
        summary = rep.get("summary") if isinstance(rep, dict) else None
        for r in (summary or {}).get("requirements", []) or []:
            if r.get("key") in wanted and r.get("key") in ("stt_accuracy", "answer_accuracy"):
                rows.append({**r, "key": f"regression:{name}:{r['key']}",
                             "label": f"field regression set {name!r}: {r.get('label', r['key'])}"})
    return rows


def attach_evaluation(session: Session, version: str | ModelVersion, report: dict[str, Any], *, kind: str | None = None,
                      actor: str | None = None, clock: Clock = utc_now) -> ModelVersion:
    """Store an offline evaluation report on a version and its gate verdicts.

    Parameters
    ----------
    report
        ``inference_core.evaluate.evaluate`` output (``speakerops evaluate --json``); its
        ``models`` must name this version for the version's kind, and ``summary.requirements``
        holds the verdicts. The bulky per-utterance rows are kept (they explain the figures).
        ``regression`` (optional, ``{set name: report}``) holds the evaluations on the field
        regression sets; their STT/answer accuracy gate the version too.

    Raises
    ------
    RegistryError
        Unknown version, a report of another version, or a report without ``summary``.

    Notes
    -----
    A new evaluation clears an earlier gate override: the override was about the old figures.
    """
    mv = get_version(session, version, kind)
    report = _jsonable(report)
    evaluated = (report.get("models") or {}).get(mv.kind)
    if evaluated is not None and evaluated != mv.version:
        raise RegistryError(f"the report evaluated {mv.kind} {evaluated}, not {mv.version}")
    summary = report.get("summary")
    if not isinstance(summary, dict):
        raise RegistryError("the report has no summary; pass the JSON of `speakerops evaluate --json`")
    wanted = KIND_REQUIREMENTS[mv.kind]
    verdicts = [dict(r) for r in summary.get("requirements", []) if r.get("key") in wanted]
    verdicts += _regression_verdicts(report.get("regression"), wanted)
    known = [r["passed"] for r in verdicts if r.get("passed") is not None]
    passed = all(known) if known else None
    before = {"evaluation_passed": mv.evaluation_passed, "override": mv.gate_override_reason}
    mv.evaluation, mv.evaluated_at, mv.evaluation_passed, mv.requirements = report, clock(), passed, verdicts
    mv.gate_override_reason = mv.gate_override_by = mv.gate_override_at = None
    audit.record(session, "model.evaluate", "model_version", f"{mv.kind}/{mv.version}", before=before,
                 after={"evaluation_passed": passed,
                        "requirements": {r["key"]: {"value": r.get("value"), "passed": r.get("passed")}
                                         for r in verdicts}},
                 actor=actor, clock=clock)
    return mv


def _jsonable(value: Any) -> Any:
    """Plain JSON for both databases: NaN/inf → None, numpy scalars and paths → Python/str."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return int(value)
    try:
        f = float(value)
    except (TypeError, ValueError):
        return str(value)
    if isinstance(value, float) or hasattr(value, "dtype"):
        if math.isnan(f) or math.isinf(f):
            return None
        return int(f) if hasattr(value, "dtype") and float(f).is_integer() and "int" in str(value.dtype) else f
    return str(value)


def rollout_gate(session: Session, version: str | ModelVersion, kind: str | None = None) -> GateDecision:
    """May ``version`` be rolled out? Passed evaluation → yes; failed or none → only with an override.

    Raises
    ------
    RegistryError
        Unknown version.
    """
    mv = get_version(session, version, kind)
    failed = [r for r in (mv.requirements or []) if r.get("passed") is False]
    if mv.evaluation_passed:
        return GateDecision(mv.kind, mv.version, True, "the offline evaluation passed every service requirement")
    if mv.evaluation_passed is None:
        why = ("not evaluated yet" if mv.evaluation is None
               else "the evaluation measured none of the requirements of this kind")
    else:
        why = "the offline evaluation failed: " + "; ".join(
            f"{r.get('label', r.get('key'))} (measured {_fmt(r.get('value'))})" for r in failed)
    if mv.gate_override_reason:
        return GateDecision(mv.kind, mv.version, True, f"{why} — overridden by {mv.gate_override_by}: "
                            f"{mv.gate_override_reason}", failed, True, mv.gate_override_reason)
    return GateDecision(mv.kind, mv.version, False,
                        f"{mv.kind} {mv.version} cannot be rolled out: {why}. Run `speakerops models evaluate "
                        f"{mv.version}`, or override with a written reason (`speakerops models override "
                        f"{mv.version} --reason ...`)", failed)


def _fmt(value: Any) -> str:
    return "—" if value is None else (f"{value:.3g}" if isinstance(value, float) else str(value))


def override_gate(session: Session, version: str | ModelVersion, reason: str, actor: str | None = None, *,
                  kind: str | None = None, clock: Clock = utc_now) -> GateDecision:
    """Allow a version whose evaluation failed (or is missing), with the operator's written reason.

    Raises
    ------
    RegistryError
        Unknown version, or an empty reason (a reason must be written).
    """
    if not reason or not reason.strip():
        raise RegistryError("an override needs a written reason (why rolling out despite the evaluation "
                            "is acceptable); it is recorded in the audit trail")
    mv = get_version(session, version, kind)
    gate = rollout_gate(session, mv)
    who = actor or audit.current_actor(session)
    mv.gate_override_reason, mv.gate_override_by, mv.gate_override_at = reason.strip(), who, clock()
    audit.record(session, "model.gate_override", "model_version", f"{mv.kind}/{mv.version}",
                 before={"allowed": gate.allowed, "evaluation_passed": mv.evaluation_passed,
                         "failed": [r.get("key") for r in gate.failed]},
                 after={"allowed": True, "overridden": True}, reason=reason.strip(), actor=who, clock=clock)
    return rollout_gate(session, mv)


def describe(session: Session, mv: ModelVersion, *, with_evaluation: bool = False) -> dict[str, Any]:
    """A JSON-able view of a version (CLI ``--json``, the console's registry table)."""
    gate = rollout_gate(session, mv)
    out = {"kind": mv.kind, "version": mv.version, "aliases": aliases_of(session, mv), "files": mv.files,
           "artifact_bytes": mv.artifact_bytes, "manifest_sha256": mv.manifest_sha256, "key_id": mv.key_id,
           "signature": mv.signature, "notes": mv.notes, "metadata": mv.bundle_metadata,
           "built_at": mv.built_at, "created_at": mv.created_at, "created_by": mv.created_by,
           "source_path": mv.source_path, "evaluated_at": mv.evaluated_at,
           "evaluation_passed": mv.evaluation_passed, "requirements": mv.requirements,
           "gate": gate.as_dict(),
           "override": None if not mv.gate_override_reason else {
               "reason": mv.gate_override_reason, "by": mv.gate_override_by, "at": mv.gate_override_at}}
    if with_evaluation:
        out["evaluation"] = mv.evaluation
    return out
