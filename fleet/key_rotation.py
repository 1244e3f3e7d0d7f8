"""Key changes on units over SSH: pushing trusted signing keys and rotating the fleet SSH key.

Both work unit by unit in a bounded thread pool and return a result per unit
(:class:`UnitOutcomes`), never all-or-nothing; a unit that fails is reported and the others go on.

:func:`push_trust`
    Writes the store's trusted signing keys (:meth:`fleet.keys.SecretStore.trusted_signing_keys`)
    into each unit's ``etc/trusted-keys/`` (:func:`fleet.unit_scripts.push_trust_script`). Every
    update does the same before ``verify-bundle`` runs, so a unit missed here learns the keys then.

:func:`rotate_ssh`
    For each unit that has not switched yet in the store's running rotation
    (:meth:`fleet.keys.SecretStore.begin_ssh_rotation`): connect (current key, then previous),
    append the new public key to the unit's authorized keys file if it is not there, log in again
    with the new key alone, and only then remove the old key's line. The outcome is recorded in the
    store at once (a crash loses nothing; running it again continues). The connector keeps trying
    the previous key, so units not switched stay reachable until ``--finish``.

The authorized keys file (:func:`authorized_keys_shell`): ``SshSettings.authorized_keys_path`` when
set (``{serial}``, ``{root}`` and a leading ``~/`` are expanded), else the path the unit names in
``<install root>/etc/ssh-authorized-keys`` (the simulator's units do), else
``~/.ssh/authorized_keys``. Edits are atomic (written to ``<file>.speakerops.tmp`` with the file's
mode, then renamed) and match a key by its base64 blob, so options before the key type are kept.
"""

from __future__ import annotations

import logging
import shlex
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from fleet import unit_scripts
from fleet.errors import FleetError, RemoteCommandError
from fleet.keys import SecretStore, SecretStoreError, to_paramiko
from fleet.models import Unit
from fleet.settings import SshSettings
from fleet.ssh import SshConnector, UnitTarget

logger = logging.getLogger(__name__)

q = shlex.quote
#: Units worked on at once (SpeakerOps' choice, like Ansible's default forks of 5 raised for a fleet:
#: FIELD_NOTES "Parallel SSH"); each unit needs two short SSH logins.
DEFAULT_PARALLEL = 10
#: Exit status of the rotation scripts when the authorized keys path is unusable.
EXIT_BAD_PATH = 30
#: Exit status of the removal script when the new key is not in the file (nothing is removed).
EXIT_NEW_KEY_MISSING = 31


@dataclass(frozen=True)
class UnitOutcome:
    """One unit's result: ``ok`` and what happened (or what went wrong)."""

    serial: str
    ok: bool
    detail: str


@dataclass
class UnitOutcomes:
    """Results per unit (fabric's ``GroupResult`` shape): ``outcomes[serial]``, ``.succeeded``, ``.failed``."""

    outcomes: dict[str, UnitOutcome] = field(default_factory=dict)

    @property
    def succeeded(self) -> list[str]:
        return sorted(s for s, o in self.outcomes.items() if o.ok)

    @property
    def failed(self) -> list[str]:
        return sorted(s for s, o in self.outcomes.items() if not o.ok)

    def as_dict(self) -> dict[str, dict[str, Any]]:
        return {s: {"ok": o.ok, "detail": o.detail} for s, o in sorted(self.outcomes.items())}


def ssh_targets(session: Session, settings: SshSettings | None = None) -> tuple[list[UnitTarget], list[str]]:
    """The SSH targets of every inventoried unit with an SSH address, and the serials without one.

    Parameters
    ----------
    settings
        For the install root template (``SPEAKEROPS_SSH_INSTALL_ROOT``).
    """
    from fleet.unit_update import target_for_unit

    settings = settings or SshSettings()
    targets, skipped = [], []
    for unit in session.execute(select(Unit).order_by(Unit.serial)).scalars():
        if unit.ssh_host and unit.ssh_port:
            targets.append(target_for_unit(unit, settings))
        else:
            skipped.append(unit.serial)
    return targets, skipped


def _each(targets: Iterable[UnitTarget], fn: Callable[[UnitTarget], str], parallel: int) -> UnitOutcomes:
    result = UnitOutcomes()

    def one(target: UnitTarget) -> UnitOutcome:
        try:
            return UnitOutcome(target.serial, True, fn(target))
        except (FleetError, OSError) as exc:
            return UnitOutcome(target.serial, False, str(exc))
        except Exception as exc:  # noqa: BLE001 - one unit's bug must not stop the others
            logger.exception("%s: unexpected error", target.serial)
            return UnitOutcome(target.serial, False, f"{type(exc).__name__}: {exc}")

    with ThreadPoolExecutor(max_workers=max(1, parallel), thread_name_prefix="keys") as pool:
        for outcome in pool.map(one, list(targets)):
            result.outcomes[outcome.serial] = outcome
            log = logger.info if outcome.ok else logger.warning
            log("%s: %s", outcome.serial, outcome.detail)
    return result


# -- trusted signing keys ---------------------------------------------------------------------------
def push_trust(connector: SshConnector, targets: Iterable[UnitTarget], keys: dict[str, bytes] | None = None, *,
               parallel: int = DEFAULT_PARALLEL) -> UnitOutcomes:
    """Write the trusted signing keys into every unit's ``etc/trusted-keys/``.

    Parameters
    ----------
    keys
        ``{key_id: public PEM}``; default the connector's store (:meth:`SshConnector.trusted_signing_keys`).

    Returns
    -------
    UnitOutcomes
        Per unit: ``"N new key(s) trusted"`` or the error (unreachable, host key, path outside the root).
    """
    keys = connector.trusted_signing_keys() if keys is None else keys
    if not keys:
        raise SecretStoreError("the store has no signing key to push yet: import a bundle "
                               "(speakerops models import) or rotate (speakerops keys rotate-signing)")

    def push(target: UnitTarget) -> str:
        with connector.connect(target) as s:
            res = s.run_script(unit_scripts.push_trust_script(target.install_root, keys), label="push trusted keys")
        if res.status != 0 or "@trusted" not in res.stdout:
            raise RemoteCommandError(f"{target.serial}: writing the trusted keys failed (exit {res.status}): "
                                     f"{res.stderr.strip() or res.stdout.strip()}", status=res.status)
        written = res.stdout.rsplit("@trusted", 1)[1].split()[0]
        return f"{written} key(s) written, {len(keys)} trusted"

    return _each(targets, push, parallel)


# -- SSH key rotation -------------------------------------------------------------------------------
def authorized_keys_shell(settings: SshSettings, target: UnitTarget) -> str:
    """Shell lines that set ``$f`` to the unit's authorized keys file (see the module docstring)
    and refuse a relative path or one holding a newline (exit :data:`EXIT_BAD_PATH`)."""
    configured = settings.authorized_keys_path
    if configured:
        path = configured.replace("{serial}", target.serial).replace("{root}", target.install_root)
        word = f'"$HOME"/{q(path[2:])}' if path.startswith("~/") else q(path)
        pick = f"f={word}"
    else:
        named = q(target.install_root.rstrip("/") + "/etc/ssh-authorized-keys")
        pick = (f'if [ -s {named} ]; then f=$(head -n 1 -- {named}); else f="$HOME/.ssh/authorized_keys"; fi')
    return (f"{pick}\n"
            f'case "$f" in /*) ;; *) echo "authorized keys path \'$f\' is not absolute; set '
            f'SPEAKEROPS_SSH_AUTHORIZED_KEYS_PATH" >&2; exit {EXIT_BAD_PATH};; esac\n'
            'echo "@path $f"\n')


def append_key_script(settings: SshSettings, target: UnitTarget, public_line: str) -> str:
    """Add ``public_line`` to the authorized keys file unless its key blob is there already."""
    blob = public_line.split()[1]
    return ("set -u\numask 077\n" + authorized_keys_shell(settings, target)
            + 'mkdir -p -- "$(dirname -- "$f")" || exit 1\n'
            f'if ! grep -qF -- {q(blob)} "$f" 2>/dev/null; then\n'
            # a last line without its newline would join ours
            '    if [ -s "$f" ] && [ -n "$(tail -c 1 -- "$f")" ]; then echo >> "$f" || exit 1; fi\n'
            f'    printf "%s\\n" {q(public_line)} >> "$f" || exit 1\n'
            '    echo @appended\n'
            'fi\n')


def remove_key_script(settings: SshSettings, target: UnitTarget, old_line: str, new_line: str) -> str:
    """Remove the old key's line(s) — only while the new key's line is in the file."""
    old, new = old_line.split()[1], new_line.split()[1]
    return ("set -u\numask 077\n" + authorized_keys_shell(settings, target)
            + f'grep -qF -- {q(new)} "$f" || {{ echo "the new key is not in $f; the old key is kept" >&2; '
            f'exit {EXIT_NEW_KEY_MISSING}; }}\n'
            f'if grep -qF -- {q(old)} "$f"; then\n'
            '    t="$f.speakerops.tmp"\n'
            f'    grep -vF -- {q(old)} "$f" > "$t"; [ $? -le 1 ] || {{ rm -f -- "$t"; exit 1; }}\n'
            '    chmod --reference="$f" -- "$t" 2>/dev/null; mv -f -- "$t" "$f" || exit 1\n'
            '    echo @removed\n'
            'fi\n')


def _rotate_unit(connector: SshConnector, target: UnitTarget, new_line: str, new_key: Any, old_line: str) -> str:
    settings = connector.settings
    with connector.connect(target) as s:  # current (new) key first, then the previous one
        res = s.run_script(append_key_script(settings, target, new_line), label="add the new SSH key")
    if res.status != 0:
        raise RemoteCommandError(f"{target.serial}: adding the new key failed (exit {res.status}): "
                                 f"{res.stderr.strip() or res.stdout.strip()}", status=res.status)
    path = res.stdout.split("@path ", 1)[1].splitlines()[0] if "@path " in res.stdout else "?"
    with connector.connect(target, pkey=new_key) as s:  # the new key alone must log in …
        res = s.run_script(remove_key_script(settings, target, old_line, new_line), label="remove the old SSH key")
    if res.status != 0:  # … before the old one goes
        raise RemoteCommandError(f"{target.serial}: the new key logs in, but removing the old key from {path} "
                                 f"failed (exit {res.status}): {res.stderr.strip()}", status=res.status)
    return f"switched ({path}{', old key removed' if '@removed' in res.stdout else ''})"


def rotate_ssh(connector: SshConnector, store: SecretStore, targets: Iterable[UnitTarget], *,
               parallel: int = DEFAULT_PARALLEL) -> UnitOutcomes:
    """Move every unit not yet switched in the store's running rotation to the new key.

    Units already switched are skipped (reported as such); each outcome is recorded in the store
    as soon as it is known.

    Raises
    ------
    SecretStoreError
        No rotation running, or the new key cannot be opened.
    """
    rotation = store.ssh_rotation()
    if rotation is None:
        raise SecretStoreError("no SSH key rotation is running (speakerops keys rotate-ssh starts one)")
    index = store.index()["ssh"]["keys"]
    new_line, old_line = index[rotation["to"]]["public"], index[rotation["from"]]["public"]
    new_key = next((to_paramiko(k) for info, k in store.ssh_private_keys() if info.key_id == rotation["to"]), None)
    if new_key is None:
        raise SecretStoreError(f"the new SSH key {rotation['to']} is missing from the store")
    targets = list(targets)
    done = {s for s, u in rotation["units"].items() if u.get("state") == "switched"}
    todo = [t for t in targets if t.serial not in done]
    result = UnitOutcomes({t.serial: UnitOutcome(t.serial, True, "already switched")
                           for t in targets if t.serial in done})

    def rotate(target: UnitTarget) -> str:
        try:
            detail = _rotate_unit(connector, target, new_line, new_key, old_line)
        except Exception as exc:
            store.record_ssh_unit(target.serial, False, str(exc))
            raise
        store.record_ssh_unit(target.serial, True, detail)
        return detail

    result.outcomes.update(_each(todo, rotate, parallel).outcomes)
    return result
