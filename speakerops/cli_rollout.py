"""Model-registry and rollout verbs of the ``speakerops`` CLI (issue #5): ``models import|list|show|
alias|evaluate|override`` (added to the ``models`` group of :mod:`speakerops.cli_voice`), ``units
approve-host-key|host-keys`` (on the ``units`` group) and ``rollout …``."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Annotated, Any

import typer

from speakerops.cli_common import DbUrl, JsonOut, _db_url, _emit, _fail, _runtime

logger = logging.getLogger(__name__)


# ================================================================================================
# Model registry and SSH host keys (R1)
# ================================================================================================
def _registry_models_app() -> typer.Typer:
    from speakerops.cli_voice import models_app

    return models_app


models_app = _registry_models_app()
#: ``units …`` verbs of this module; attached to the main CLI's ``units`` group by :func:`register`.
host_keys_app = typer.Typer(help="SSH host keys of units.", no_args_is_help=True)

Kind = Annotated[str | None, typer.Option("--kind", help="stt, qa or tts (when a version name is ambiguous).")]


def _size(n: int) -> str:
    return f"{n / 1e6:.2f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"


def _verdicts(reqs: list[dict[str, Any]] | None) -> str:
    if not reqs:
        return "not evaluated"
    marks = []
    for r in reqs:
        mark = "–" if r.get("passed") is None else ("✔" if r["passed"] else "✖")
        value = r.get("value")
        marks.append(f"{mark} {r.get('label', r.get('key'))}"
                     + ("" if value is None else f" ({value:.3g})" if isinstance(value, float) else f" ({value})"))
    return "; ".join(marks)


@models_app.command("import")
def models_import(ctx: typer.Context,
                  path: Annotated[Path, typer.Argument(help="Bundle directory (<kind>/<version>/ with manifest.json).")],
                  notes: Annotated[str, typer.Option("--notes", help="Free text kept with the version.")] = "",
                  as_json: JsonOut = False, db_url: DbUrl = None) -> None:
    """Verify a bundle's checksums, store and sign a copy, and register the version."""
    from fleet.errors import FleetError
    from fleet.registry import describe, import_bundle, registry_root
    from fleet.signing import KeyStore

    if not (path / "manifest.json").is_file():
        raise _fail(f"{path} is not a bundle (no manifest.json); `speakerops models build` makes bundles")
    with _runtime(_db_url(ctx, db_url)) as rt:
        try:
            signer = KeyStore(rt.settings.data_dir).signer()
            with rt.session_factory.begin() as session:
                mv = import_bundle(session, path, registry_root(rt.settings.data_dir), signer, rt.clock, notes=notes)
                data = describe(session, mv)
        except FleetError as exc:
            raise _fail(str(exc)) from exc
    _emit(data, as_json, f"{data['kind']} {data['version']}: {len(data['files'])} files, "
                         f"{_size(data['artifact_bytes'])}, signed with key {data['key_id']}\n"
                         f"  stored in {data['source_path']}")


@models_app.command("list")
def models_list(ctx: typer.Context, kind: Kind = None, as_json: JsonOut = False, db_url: DbUrl = None) -> None:
    """Registered versions with aliases, size, evaluation and gate."""
    from fleet.registry import describe, list_versions

    with _runtime(_db_url(ctx, db_url)) as rt, rt.session_factory() as session:
        rows = [describe(session, mv) for mv in list_versions(session, kind)]
    lines = [f"{'kind':<5}{'version':<20}{'aliases':<20}{'size':>10}  {'evaluation':<11}gate"]
    for r in rows:
        ev = {True: "passed", False: "FAILED", None: "—"}[r["evaluation_passed"]]
        gate = "allowed" + (" (override)" if r["gate"]["overridden"] else "") if r["gate"]["allowed"] else "refused"
        lines.append(f"{r['kind']:<5}{r['version'][:19]:<20}{','.join(r['aliases'])[:19]:<20}"
                     f"{_size(r['artifact_bytes']):>10}  {ev:<11}{gate}")
    _emit(rows, as_json, "\n".join(lines) + f"\n{len(rows)} versions")


@models_app.command("show")
def models_show(ctx: typer.Context, version: Annotated[str, typer.Argument(help="Version (or KIND@ALIAS).")],
                kind: Kind = None, evaluation: Annotated[bool, typer.Option(
                    "--evaluation", help="Include the whole evaluation report in --json.")] = False,
                as_json: JsonOut = False, db_url: DbUrl = None) -> None:
    """One version: files, signature, evaluation verdicts, gate, override."""
    from fleet.errors import FleetError
    from fleet.registry import describe, get_version, resolve

    with _runtime(_db_url(ctx, db_url)) as rt, rt.session_factory() as session:
        try:
            if "@" in version:
                k, _, alias = version.partition("@")
                mv = resolve(session, k, alias)
            else:
                mv = get_version(session, version, kind)
            d = describe(session, mv, with_evaluation=evaluation)
        except FleetError as exc:
            raise _fail(str(exc)) from exc
    lines = [f"{d['kind']} {d['version']}" + (f"  (aliases: {', '.join(d['aliases'])})" if d["aliases"] else ""),
             f"  stored     {d['source_path']}",
             f"  size       {_size(d['artifact_bytes'])} in {len(d['files'])} files",
             f"  signed     key {d['key_id']}, manifest SHA-256 {d['manifest_sha256'][:16]}…",
             f"  imported   {d['created_at']} by {d['created_by']}" + (f"; notes: {d['notes']}" if d["notes"] else ""),
             f"  evaluation {_verdicts(d['requirements'])}",
             f"  gate       {'allowed' if d['gate']['allowed'] else 'REFUSED'}: {d['gate']['reason']}"]
    lines += [f"    {name}  {f['bytes']:>12,d} B  {f['sha256'][:16]}…" for name, f in sorted(d["files"].items())]
    _emit(d, as_json, "\n".join(lines))


@models_app.command("alias")
def models_alias(ctx: typer.Context, kind: Annotated[str, typer.Argument(help="stt, qa or tts.")],
                 alias: Annotated[str, typer.Argument(help="e.g. production, canary.")],
                 version: Annotated[str, typer.Argument(help="The version it points at.")],
                 as_json: JsonOut = False, db_url: DbUrl = None) -> None:
    """Point an alias of a kind at a version (created or moved; audited)."""
    from fleet.errors import FleetError
    from fleet.registry import set_alias

    with _runtime(_db_url(ctx, db_url)) as rt:
        try:
            with rt.session_factory.begin() as session:
                set_alias(session, kind, alias, version, clock=rt.clock)
        except FleetError as exc:
            raise _fail(str(exc)) from exc
    _emit({"kind": kind, "alias": alias, "version": version}, as_json, f"{kind}@{alias} → {version}")


def _default_testset() -> Path:
    from importlib.resources import files

    return Path(str(files("resources") / "testset" / "manifest.jsonl"))


@models_app.command("evaluate")
def models_evaluate(ctx: typer.Context, version: Annotated[str, typer.Argument(help="A registered version.")],
                    kind: Kind = None,
                    testset: Annotated[Path | None, typer.Option(
                        "--testset", help="JSONL manifest (default: the shipped resources/testset).")] = None,
                    report: Annotated[Path | None, typer.Option(
                        "--report", help="Attach this `speakerops evaluate --json` report instead of running.")] = None,
                    limit: Annotated[int | None, typer.Option(help="Only the first N test-set lines.")] = None,
                    no_mos: Annotated[bool, typer.Option("--no-mos", help="Skip DNSMOS (faster; MOS unmeasured).")] = False,
                    models_dir: Annotated[Path | None, typer.Option(
                        "--models-dir", help="Bundles for the other kinds (default DATA_DIR/models).")] = None,
                    no_regression: Annotated[bool, typer.Option(
                        "--no-regression", help="Skip the field regression sets (DATA_DIR/testsets/*).")] = False,
                    as_json: JsonOut = False, db_url: DbUrl = None) -> None:
    """Evaluate a registered version offline (the other kinds at their default versions) on the test
    set and on every field regression set (DATA_DIR/testsets/NAME/manifest.jsonl, made by
    `speakerops unit add-case`), and attach the result; the verdicts decide the rollout gate."""
    from fleet.errors import FleetError
    from fleet.registry import attach_evaluation, get_version, rollout_gate

    with _runtime(_db_url(ctx, db_url)) as rt:
        with rt.session_factory() as session:
            try:
                mv = get_version(session, version, kind)
            except FleetError as exc:
                raise _fail(str(exc)) from exc
            kind_, path = mv.kind, Path(mv.source_path)
        if report is not None:
            try:
                data = json.loads(report.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise _fail(f"cannot read the report {report} ({exc}); pass `speakerops evaluate --json FILE`'s "
                            "output") from exc
        else:
            sets = [] if no_regression else sorted((rt.settings.data_dir / "testsets").glob("*/manifest.jsonl"))
            data = _run_evaluation(kind_, path, testset or _default_testset(), limit, no_mos, models_dir, sets)
        try:
            with rt.session_factory.begin() as session:
                mv = attach_evaluation(session, version, data, kind=kind_, clock=rt.clock)
                gate = rollout_gate(session, mv)
                out = {"kind": mv.kind, "version": mv.version, "evaluation_passed": mv.evaluation_passed,
                       "requirements": mv.requirements, "gate": gate.as_dict()}
        except FleetError as exc:
            raise _fail(str(exc)) from exc
    _emit(out, as_json, f"{kind_} {version}: {_verdicts(out['requirements'])}\n"
                        f"gate: {'allowed' if gate.allowed else 'REFUSED'} — {gate.reason}")
    if out["evaluation_passed"] is False:
        raise typer.Exit(1)


def _run_evaluation(kind: str, path: Path, testset: Path, limit: int | None, no_mos: bool,
                    models_dir: Path | None, regression_sets: list[Path] = ()) -> dict[str, Any]:
    from inference_core.bundles import DEFAULT_VERSIONS, bundle_dir, build_default_bundles, load_bundle
    from inference_core.errors import InferenceError
    from inference_core.evaluate import evaluate
    from inference_core.pipeline import LoopOptions, VoiceLoop
    from speakerops.cli_voice import _progress, models_root

    if not testset.is_file():
        raise _fail(f"test set {testset} does not exist (the shipped one: resources/testset/manifest.jsonl)")
    root = models_root(models_dir)
    try:
        if any(not (bundle_dir(root, k, v) / "manifest.json").is_file() for k, v in DEFAULT_VERSIONS.items()
               if k != kind):
            build_default_bundles(root)
        bundles = {k: load_bundle(bundle_dir(root, k, v)) for k, v in DEFAULT_VERSIONS.items() if k != kind}
        bundles[kind] = load_bundle(path)
        loop = VoiceLoop(bundles, LoopOptions(mos=not no_mos))
    except InferenceError as exc:
        raise _fail(str(exc)) from exc
    data = evaluate(testset, loop, report=_progress, limit=limit)
    if regression_sets:  # the technicians' field cases gate the version too (fleet.registry)
        data["regression"] = {m.parent.name: evaluate(m, loop, report=_progress) for m in regression_sets}
    return data


@models_app.command("override")
def models_override(ctx: typer.Context, version: Annotated[str, typer.Argument(help="A registered version.")],
                    reason: Annotated[str, typer.Option("--reason", help="Why rolling it out anyway is acceptable.")],
                    kind: Kind = None, as_json: JsonOut = False, db_url: DbUrl = None) -> None:
    """Allow rolling out a version whose evaluation failed, with a written reason (audited)."""
    from fleet.errors import FleetError
    from fleet.registry import override_gate

    with _runtime(_db_url(ctx, db_url)) as rt:
        try:
            with rt.session_factory.begin() as session:
                gate = override_gate(session, version, reason, kind=kind, clock=rt.clock)
        except FleetError as exc:
            raise _fail(str(exc)) from exc
    _emit(gate.as_dict(), as_json, f"{gate.kind} {gate.version}: gate overridden — {gate.reason}")


@host_keys_app.command("approve-host-key")
def approve_host_key(ctx: typer.Context, serial: Annotated[str, typer.Argument(help="Unit serial.")],
                     fingerprint: Annotated[str, typer.Argument(help="SHA256:… as the refusal showed it.")],
                     replace: Annotated[bool, typer.Option(
                         "--replace", help="Replace the unit's approved key (a re-imaged unit).")] = False,
                     as_json: JsonOut = False, db_url: DbUrl = None) -> None:
    """Approve the SSH host key a unit presented, after checking its fingerprint on the unit."""
    from fleet.errors import FleetError
    from fleet.ssh import approve

    with _runtime(_db_url(ctx, db_url)) as rt:
        try:
            with rt.session_factory.begin() as session:
                row = approve(session, serial, fingerprint, replace=replace, clock=rt.clock)
                data = {"serial": row.serial, "fingerprint": row.fingerprint, "state": row.state,
                        "approved_by": row.approved_by, "approved_at": row.approved_at}
        except FleetError as exc:
            raise _fail(str(exc)) from exc
    _emit(data, as_json, f"{serial}: host key {data['fingerprint']} approved")


@host_keys_app.command("host-keys")
def host_keys(ctx: typer.Context, serial: Annotated[str | None, typer.Argument(help="One unit (default all).")] = None,
              as_json: JsonOut = False, db_url: DbUrl = None) -> None:
    """SSH host keys units presented: pending, approved, refused."""
    from fleet.ssh import list_host_keys

    with _runtime(_db_url(ctx, db_url)) as rt, rt.session_factory() as session:
        rows = [{"serial": r.serial, "host": r.host, "port": r.port, "key_type": r.key_type,
                 "fingerprint": r.fingerprint, "state": r.state, "first_seen_at": r.first_seen_at,
                 "last_seen_at": r.last_seen_at, "approved_by": r.approved_by, "approved_at": r.approved_at}
                for r in list_host_keys(session, serial)]
    _emit(rows, as_json, "\n".join(f"{r['serial']:<12}{r['state']:<10}{r['fingerprint']}  {r['host']}:{r['port']}"
                                   for r in rows) or "no host keys recorded")


def _register_registry(app: typer.Typer) -> None:
    """``models …`` verbs are on the shared ``models_app`` already; put the host-key verbs on the
    main CLI's ``units`` group (or a ``hosts`` group if there is none)."""
    units = next((g.typer_instance for g in app.registered_groups if g.name == "units"), None)
    if units is None:
        app.add_typer(host_keys_app, name="hosts")
        return
    for cmd in host_keys_app.registered_commands:
        units.registered_commands.append(cmd)


# ================================================================================================
# Rollouts (R2) — below this line
# ================================================================================================
from speakerops.cli_rollout_engine import rollout_app  # noqa: E402  (rollout plan|start|run|status|…)


def register(app: typer.Typer) -> None:
    """Add the registry and rollout verbs to ``app``."""
    _register_registry(app)
    app.add_typer(rollout_app, name="rollout")  # the staged rollout engine (R2)
