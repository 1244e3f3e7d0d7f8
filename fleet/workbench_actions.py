"""Unit actions of the technician workbench, each audited, and field reports as regression cases.

* :func:`restart_voice_service` — ``bin/restart-voice-service`` on the unit over SSH;
* :func:`collect_logs` — the log tails and model versions only (no recordings);
* :func:`pin_unit` — hold the unit at a version through the rollout machinery
  (``fleet.rollout_control.pin``, so rollouts skip it) and bring it there: its previous version by
  ``fleet.unit_update.rollback_unit``, another registered version by ``fleet.unit_update.update_unit``;
* :func:`run_unit_selftest` — the acoustic self-test alone, stored in ``unit_selftests``;
* :func:`add_regression_case` — with the household's consent, a failing recording plus its
  corrected transcript and intent joins a named regression test set
  ``<data_dir>/testsets/<name>/manifest.jsonl`` (the format of ``resources/testset/manifest.jsonl``,
  docs/testset.md), which ``speakerops evaluate`` and the registry's evaluation gate run.

Every action returns an :class:`ActionResult` (never raises for unit failures) and writes an audit
entry in the same transaction as its database change (or, for a change on the unit itself, right
after it, with the outcome).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from fleet.errors import FleetError
from fleet.workbench import WorkbenchContext, WorkbenchError, run_dir_for, unit_info
from fleet.workbench_collect import Collection, CollectLimits, collect
from speakerops import audit
from speakerops.timeutil import Clock, utc_now

logger = logging.getLogger(__name__)

_SET_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")


@dataclass
class ActionResult:
    """What a unit action did: ``ok``, a sentence for the operator, and details."""

    serial: str
    action: str
    ok: bool
    message: str
    detail: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"serial": self.serial, "action": self.action, "ok": self.ok, "message": self.message,
                "detail": self.detail}


def _audit(ctx: WorkbenchContext, action: str, serial: str, after: dict[str, Any], reason: str | None,
           actor: str | None) -> None:
    with ctx.session_factory.begin() as session:
        audit.record(session, action, "unit", serial, after=after, reason=reason, actor=actor, clock=ctx.clock)


def _info(ctx: WorkbenchContext, serial: str):
    with ctx.session_factory() as session:
        return unit_info(session, serial, ctx.ssh_settings or ctx.connector.settings)


def restart_voice_service(ctx: WorkbenchContext, serial: str, *, reason: str | None = None,
                          actor: str | None = None) -> ActionResult:
    """Run ``bin/restart-voice-service`` on the unit; audited as ``unit.restart`` with the outcome.

    Raises
    ------
    WorkbenchError
        Unknown unit.
    """
    info = _info(ctx, serial)
    res = ActionResult(serial, "restart", False, "")
    if info.target is None:
        res.message = info.target_error or "no SSH address"
    else:
        try:
            with ctx.connector.connect(info.target) as s:
                out = s.run(s.resolve("bin/restart-voice-service"), label="restart-voice-service", check=True)
            res.ok, res.message = True, out.stdout.strip() or "voice service restarted"
        except FleetError as exc:
            res.message = str(exc)
    _audit(ctx, "unit.restart", serial, {"ok": res.ok, "message": res.message[:500]}, reason, actor)
    return res


def collect_logs(ctx: WorkbenchContext, serial: str, *, limits: CollectLimits | None = None,
                 progress: Any = None, cancelled: Any = None, actor: str | None = None) -> Collection:
    """Fetch the unit's log tails and model versions into a new run directory; audited
    (``unit.collect_logs``). See :func:`fleet.workbench_collect.collect` for the bounds."""
    info = _info(ctx, serial)
    run_dir = run_dir_for(ctx.data_dir, serial, ctx.clock())
    run_dir = run_dir.with_name(run_dir.name + "-logs")
    if info.target is None:
        col = Collection(serial, run_dir, ctx.clock(), status="unreachable", error=info.target_error)
        col.finished_at = ctx.clock()
        col.write_manifest()
    else:
        col = collect(ctx.connector, info.target, run_dir, consent_recordings=False, limits=limits,
                      progress=progress, cancelled=cancelled, clock=ctx.clock, with_recordings=False)
    _audit(ctx, "unit.collect_logs", serial, {"status": col.status, "run_dir": str(run_dir),
                                              "bytes": sum(f.bytes for f in col.files)}, None, actor)
    return col


def run_unit_selftest(ctx: WorkbenchContext, serial: str, *, actor: str | None = None,
                      loop_options: Any = None) -> dict[str, Any]:
    """The acoustic self-test alone (``fleet.selftest``), stored with its history and trend.

    The phrase is recognized with the default STT bundle (``ctx.models_root``)."""
    from fleet import selftest as st
    from inference_core.bundles import DEFAULT_VERSIONS, bundle_dir, load_bundle

    info = _info(ctx, serial)
    recognizer = None
    try:
        from fleet.workbench_replay import resolve_bundles

        with ctx.session_factory() as session:
            bundles, _ = resolve_bundles(session, {k: v for k, v in info.versions.items()}, ctx.models_root)
        recognizer = ctx.loops.get(bundles, loop_options).recognizer
    except Exception as exc:  # noqa: BLE001 - the acoustic figures do not need the recognizer
        logger.warning("no recognizer for the self-test (%s); trying the default STT bundle", exc)
        try:
            from inference_core.stt import Recognizer

            recognizer = Recognizer(load_bundle(bundle_dir(ctx.models_root, "stt", DEFAULT_VERSIONS["stt"])).path)
        except Exception:  # noqa: BLE001
            recognizer = None
    res = st.run_selftest(serial, info.agent_url, recognizer=recognizer, clock=ctx.clock, client=ctx.http_client)
    with ctx.session_factory.begin() as session:
        if res.verdict != "failed":
            st.record_selftest(session, info.unit_id, res, actor=actor, clock=ctx.clock)
        else:
            audit.record(session, "unit.selftest", "unit", serial, after={"verdict": "failed", "error": res.error},
                         actor=actor, clock=ctx.clock)
    with ctx.session_factory() as session:
        history = st.selftest_history(session, serial)
    return {**res.to_dict(), "history": history, "trend": st.trend(history)}


def pin_unit(ctx: WorkbenchContext, serial: str, kind: str, version: str | None = None, *,
             reason: str | None = None, actor: str | None = None, health_timeout_s: float = 60.0) -> ActionResult:
    """Pin the unit to ``kind``/``version`` (default: its previous version) and install it.

    The pin (``fleet.rollout_control.pin``, audited ``unit.pin``) makes rollouts skip the unit;
    then the unit is switched: to its ``previous`` version by ``rollback_unit``, to another
    registered version by ``update_unit`` (the registry's signed bundle), nothing when it already
    runs it. The switch's outcome is audited as ``unit.pin_apply``.

    Raises
    ------
    WorkbenchError
        Unknown unit.
    """
    from fleet.registry import get_version
    from fleet.rollout_control import RolloutError, pin
    from fleet.unit_update import default_health_check, inspect_unit, rollback_unit, update_unit

    info = _info(ctx, serial)
    res = ActionResult(serial, "pin", False, "", {"kind": kind})
    if info.target is None:
        res.message = info.target_error or "no SSH address"
        return res
    try:
        state = inspect_unit(ctx.connector, ctx.session_factory, info.target, kind)
    except FleetError as exc:
        res.message = f"cannot read the unit's {kind} versions: {exc}"
        return res
    version = version or state.previous
    res.detail.update(version=version, current=state.current, previous=state.previous)
    if not version:
        res.message = f"{serial} has no previous {kind} version to pin to; name one"
        return res
    bundle = None
    if version not in (state.current, state.previous):
        try:
            with ctx.session_factory() as session:
                bundle = Path(get_version(session, version, kind).source_path)
        except FleetError as exc:
            res.message = str(exc)
            return res
    try:
        with ctx.session_factory.begin() as session:
            pin(session, serial, kind, version, reason=reason, clock=ctx.clock, actor=actor)
    except RolloutError as exc:
        res.message = str(exc)
        return res
    if version == state.current:
        res.ok, res.message = True, f"pinned at {kind} {version}, which the unit already runs"
    elif version == state.previous:
        out = rollback_unit(ctx.connector, ctx.session_factory, info.target, kind, reason or "pinned by workbench",
                            clock=ctx.clock)
        res.ok, res.message = out.ok, (f"pinned and rolled back to {kind} {version}" if out.ok
                                       else f"pinned, but the rollback failed: {out.error}")
        res.detail["result"] = out.as_dict()
    else:
        health = default_health_check(lambda s: info.agent_url, client=ctx.http_client)
        out = update_unit(ctx.connector, ctx.session_factory, info.target, kind, version, bundle,
                          health_check=health, health_timeout_s=health_timeout_s, clock=ctx.clock)
        res.ok, res.message = out.ok, (f"pinned and updated to {kind} {version}" if out.ok
                                       else f"pinned, but the update failed at {out.step_reached}: {out.error}")
        res.detail["result"] = out.as_dict()
    _audit(ctx, "unit.pin_apply", serial, {"kind": kind, "version": version, "ok": res.ok,
                                           "message": res.message[:500]}, reason, actor)
    return res


def add_regression_case(session: Session, data_dir: Path, name: str, *, serial: str, audio: Path, text: str,
                        intent: str, consent: bool, note: str = "", actor: str | None = None,
                        clock: Clock = utc_now) -> Path:
    """Add a field recording with its corrected transcript and intent to regression set ``name``.

    The audio is copied to ``<data_dir>/testsets/<name>/audio/<serial>-<sha8>-<file>`` and one line
    appended to ``manifest.jsonl`` (``audio`` relative to it, ``text``, ``intent``, ``feature``,
    ``slots`` {}, ``speakers`` 1, ``kind`` ``field``, ``unit``, ``source_sha256``). The same audio
    twice is one case (the line is not repeated). Audited as ``testset.add_case``.

    Raises
    ------
    WorkbenchError
        No consent, a bad set name, an empty transcript or intent, or unreadable audio.
    """
    from inference_core.audio import load_audio
    from inference_core.errors import AudioFormatError

    if not consent:
        raise WorkbenchError(f"the household of {serial} did not consent to recordings: the recording cannot "
                             "be kept in a test set")
    if not _SET_NAME.match(name):
        raise WorkbenchError(f"test set name {name!r}: use lower-case letters, digits, '-' and '_'")
    if not text.strip() or not intent.strip():
        raise WorkbenchError("a regression case needs the corrected transcript and the intent")
    try:
        load_audio(audio, max_seconds=60)
    except AudioFormatError as exc:
        raise WorkbenchError(f"{audio} cannot be used as a test case: {exc}") from exc
    digest = hashlib.sha256(Path(audio).read_bytes()).hexdigest()
    root = Path(data_dir) / "testsets" / name
    manifest = root / "manifest.jsonl"
    lines = manifest.read_text(encoding="utf-8").splitlines() if manifest.is_file() else []
    if any(json.loads(line).get("source_sha256") == digest for line in lines if line.strip()):
        logger.info("%s is already in test set %s", audio, name)
        return manifest
    dest = root / "audio" / f"{serial}-{digest[:8]}-{Path(audio).name}"
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(audio, dest)
    entry = {"audio": dest.relative_to(root).as_posix(), "text": " ".join(text.split()), "intent": intent.strip(),
             "feature": intent.strip().split(".")[0], "slots": {}, "speakers": 1, "kind": "field", "unit": serial,
             "source_sha256": digest, "note": note, "added_at": clock().isoformat(timespec="seconds")}
    with manifest.open("a", encoding="utf-8") as f:
        f.write(json.dumps(entry) + "\n")
    audit.record(session, "testset.add_case", "testset", name, after={k: entry[k] for k in ("audio", "text", "intent",
                                                                                          "unit", "source_sha256")},
                 reason=note or None, actor=actor, clock=clock)
    return manifest
