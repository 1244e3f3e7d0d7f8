"""``speakerops keys status|import-ssh|rotate-signing|push-trust|rotate-ssh``: the fleet SSH key and the
registry's signing key in the secret store (:mod:`fleet.keys`, docs/security.md "Secrets").

Exit status: 0 success, 1 failure, 2 partial success (some units failed; each is listed).
"""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer

from speakerops.cli_common import DbUrl, JsonOut, _db_url, _emit, _fail, _runtime

keys_app = typer.Typer(help="Secrets: the fleet SSH key and the signing key (store, rotation, trust).",
                       no_args_is_help=True)

Parallel = Annotated[int, typer.Option("--parallel", min=1, max=200, help="Units worked on at once.")]


def _parts(rt: Any) -> tuple[Any, Any]:
    """The key store and an SSH connector of the runtime (the store's keys, settings from the environment)."""
    from fleet.settings import SshSettings
    from fleet.signing import KeyStore
    from fleet.ssh import SshConnector

    store = KeyStore(rt.settings.data_dir, clock=rt.clock)
    connector = SshConnector(rt.session_factory, SshSettings(), data_dir=rt.settings.data_dir, clock=rt.clock,
                             key_store=store)
    return store, connector


def _targets(rt: Any, connector: Any) -> list[Any]:
    from fleet.key_rotation import ssh_targets

    with rt.session_factory() as session:
        targets, _ = ssh_targets(session, connector.settings)
    return targets


def _audit(rt: Any, action: str, target_id: str, *, before: Any = None, after: Any = None) -> None:
    from speakerops import audit

    with rt.session_factory.begin() as session:
        audit.record(session, action, "key", target_id, before=before, after=after, clock=rt.clock)


def _units_text(outcomes: Any) -> list[str]:
    return [f"  {s:<16} {'ok    ' if o.ok else 'FAILED'} {o.detail}" for s, o in sorted(outcomes.outcomes.items())]


def _exit_for(outcomes: Any) -> int:
    if not outcomes.failed:
        return 0
    return 2 if outcomes.succeeded else 1


@keys_app.command("status")
def keys_status(ctx: typer.Context, as_json: JsonOut = False, db_url: DbUrl = None) -> None:
    """Backend, key ids and fingerprints, when created, and which units still need the new SSH key."""
    from fleet.errors import FleetError

    with _runtime(_db_url(ctx, db_url)) as rt:
        store, connector = _parts(rt)
        try:
            data = store.status()
        except FleetError as exc:
            raise _fail(str(exc)) from exc
        data["ssh"]["in_use"] = (f"file {connector.key_path} (SPEAKEROPS_SSH_CLIENT_KEY_PATH)"
                                 if connector.key_path else "store")
        rotation = data["ssh"]["rotation"]
        serials = [t.serial for t in _targets(rt, connector)]
        switched = {s for s, u in (rotation or {}).get("units", {}).items() if u["state"] == "switched"}
        data["ssh"]["units_pending"] = sorted(set(serials) - switched) if rotation else []
    lines = [f"store: {data['keys_dir']} — backend {data['backend']}, protection {data['protection']}"]
    sig = data["signing"]
    lines.append(f"signing key: {sig['current'] or '(none yet: created by the first models import)'}")
    for kid in sig["trusted"]:
        if kid != sig["current"]:
            lines.append(f"  still trusted: {kid} (created {sig['keys'][kid]['created_at']})")
    ssh = data["ssh"]
    for role in ("current", "previous"):
        k = ssh[role]
        if k:
            lines.append(f"SSH key ({role}): {k['fingerprint']} id {k['key_id']}, created {k['created_at']}, "
                         f"{k['source']}\n  {k['public']}")
    if not ssh["current"]:
        lines.append("SSH key: none in the store (speakerops keys import-ssh FILE, or rotate-ssh to create one)")
    lines.append(f"SSH key in use: {ssh['in_use']}")
    if rotation:
        lines.append(f"rotation {rotation['from']} → {rotation['to']} since {rotation['started_at']}: "
                     f"{len(ssh['units_pending'])} unit(s) still need the new key"
                     + (f": {', '.join(ssh['units_pending'][:20])}" if ssh["units_pending"] else
                        " — run `speakerops keys rotate-ssh --finish`"))
    _emit(data, as_json, "\n".join(lines))


@keys_app.command("import-ssh")
def keys_import_ssh(ctx: typer.Context,
                    file: Annotated[str, typer.Argument(help="Private key file (OpenSSH or PEM).")],
                    passphrase_stdin: Annotated[bool, typer.Option("--passphrase-stdin",
                                                                   help="Read the file's own passphrase from stdin.")] = False,
                    replace: Annotated[bool, typer.Option("--replace", help="Replace the store's SSH key.")] = False,
                    as_json: JsonOut = False, db_url: DbUrl = None) -> None:
    """Move an existing SSH private key into the secret store; it becomes the key SpeakerOps logs in with."""
    from pathlib import Path

    from fleet.errors import FleetError

    password = sys.stdin.readline().rstrip("\r\n") if passphrase_stdin else None
    with _runtime(_db_url(ctx, db_url)) as rt:
        store, _ = _parts(rt)
        before = store.ssh_current() if store.index_path.exists() else None
        try:
            info = store.import_ssh(Path(file), password, replace=replace)
        except FleetError as exc:
            raise _fail(str(exc)) from exc
        _audit(rt, "keys.import_ssh", info.key_id, before=before.as_dict() if before else None,
               after={k: v for k, v in info.as_dict().items() if k != "public"})
    _emit(info.as_dict(), as_json, f"imported SSH key {info.fingerprint} (id {info.key_id}) into the "
          f"{store.backend} store; you may delete {file} now")


@keys_app.command("rotate-signing")
def keys_rotate_signing(ctx: typer.Context,
                        no_push: Annotated[bool, typer.Option("--no-push", help="Do not push the new key to units now.")] = False,
                        parallel: Parallel = 10, as_json: JsonOut = False, db_url: DbUrl = None) -> None:
    """New Ed25519 signing key for new imports; the old one stays trusted; the new public key is pushed to units."""
    from fleet.errors import FleetError
    from fleet.key_rotation import push_trust

    with _runtime(_db_url(ctx, db_url)) as rt:
        store, connector = _parts(rt)
        try:
            old, new = store.rotate_signing()
        except FleetError as exc:
            raise _fail(str(exc)) from exc
        trusted = sorted(store.trusted_signing_keys())
        _audit(rt, "keys.rotate_signing", new, before={"current": old}, after={"current": new, "trusted": trusted})
        data: dict[str, Any] = {"previous": old, "current": new, "trusted": trusted, "units": {}}
        lines = [f"signing key rotated: {old or '(none)'} → {new}; trusted: {', '.join(trusted)}"]
        code = 0
        if not no_push:
            outcomes = push_trust(connector, _targets(rt, connector), parallel=parallel)
            _audit(rt, "keys.push_trust", new, after={"trusted": trusted, "units": outcomes.as_dict()})
            data["units"] = outcomes.as_dict()
            lines += [f"pushed to {len(outcomes.succeeded)} of {len(outcomes.outcomes)} unit(s) (the others learn "
                      "it with their next update, or `speakerops keys push-trust`):", *_units_text(outcomes)]
            code = 2 if outcomes.failed else 0
    _emit(data, as_json, "\n".join(lines))
    raise typer.Exit(code)


@keys_app.command("push-trust")
def keys_push_trust(ctx: typer.Context, parallel: Parallel = 10, as_json: JsonOut = False,
                    db_url: DbUrl = None) -> None:
    """Write every trusted signing key into each SSH unit's etc/trusted-keys/ now (per unit results)."""
    from fleet.errors import FleetError
    from fleet.key_rotation import push_trust

    with _runtime(_db_url(ctx, db_url)) as rt:
        store, connector = _parts(rt)
        trusted = sorted(store.trusted_signing_keys())
        try:
            outcomes = push_trust(connector, _targets(rt, connector), parallel=parallel)
        except FleetError as exc:
            raise _fail(str(exc)) from exc
        _audit(rt, "keys.push_trust", store.index()["signing"]["current"] or "-",
               after={"trusted": trusted, "units": outcomes.as_dict()})
    _emit({"trusted": trusted, "units": outcomes.as_dict()}, as_json,
          "\n".join([f"trusted keys {', '.join(trusted)} on {len(outcomes.succeeded)} of {len(outcomes.outcomes)} "
                     "unit(s):", *_units_text(outcomes)]))
    raise typer.Exit(_exit_for(outcomes))


@keys_app.command("rotate-ssh")
def keys_rotate_ssh(ctx: typer.Context,
                    finish: Annotated[bool, typer.Option("--finish", help="Delete the previous key (all units switched).")] = False,
                    parallel: Parallel = 10, as_json: JsonOut = False, db_url: DbUrl = None) -> None:
    """New SSH client key on every unit (per unit: add, check a login, remove the old); run again to retry."""
    from fleet.errors import FleetError
    from fleet.key_rotation import rotate_ssh

    with _runtime(_db_url(ctx, db_url)) as rt:
        store, connector = _parts(rt)
        if connector.key_path is not None:
            raise _fail(f"SPEAKEROPS_SSH_CLIENT_KEY_PATH names your own key file ({connector.key_path}); SpeakerOps "
                        "rotates only the key in its store: `speakerops keys import-ssh FILE`, then unset it")
        targets = _targets(rt, connector)
        try:
            if finish:
                old = store.finish_ssh_rotation([t.serial for t in targets])
                current = store.ssh_current()
                _audit(rt, "keys.rotate_ssh_finish", current.key_id, before={"previous": old},
                       after={"current": current.key_id, "units": len(targets)})
                _emit({"removed": old, "current": current.as_dict()}, as_json,
                      f"previous SSH key {old} deleted; every unit uses {current.fingerprint}")
                return
            if store.ssh_current() is None:
                info = store.create_ssh()
                _audit(rt, "keys.create_ssh", info.key_id, after={"fingerprint": info.fingerprint})
                _emit({"created": info.as_dict()}, as_json,
                      f"created the first SSH key {info.fingerprint}; add this line to each unit's authorized "
                      f"keys:\n{info.public}")
                return
            started = store.ssh_rotation() is None
            if started:
                store.begin_ssh_rotation()
            rotation = store.ssh_rotation()
            outcomes = rotate_ssh(connector, store, targets, parallel=parallel)
        except FleetError as exc:
            raise _fail(str(exc)) from exc
        _audit(rt, "keys.rotate_ssh", rotation["to"], before={"key": rotation["from"]},
               after={"key": rotation["to"], "started": started, "units": outcomes.as_dict()})
    data = {"from": rotation["from"], "to": rotation["to"], "units": outcomes.as_dict(),
            "pending": outcomes.failed}
    tail = ("all units switched: run `speakerops keys rotate-ssh --finish` to delete the previous key"
            if not outcomes.failed else
            f"{len(outcomes.failed)} unit(s) still use the previous key, which is kept (SpeakerOps still reaches "
            "them); run `speakerops keys rotate-ssh` again when they are reachable")
    _emit(data, as_json, "\n".join([f"SSH key rotation {rotation['from']} → {rotation['to']}:",
                                     *_units_text(outcomes), tail]))
    raise typer.Exit(_exit_for(outcomes))


def register(app: typer.Typer) -> None:
    """Add ``speakerops keys …`` to ``app``."""
    app.add_typer(keys_app, name="keys")
