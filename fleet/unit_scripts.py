"""The shell scripts :mod:`fleet.unit_update` runs on a unit, one per phase, each fed to the one
shell a session keeps (:meth:`fleet.ssh.UnitSession.run_script`).

Every round trip to a unit costs: a new channel, a shell started by sshd, and — with 20 uploads
sharing one interpreter — waits for the GIL on the way back. An update therefore runs one script
per phase instead of one command (or SFTP call) per small step:

``prepare``
    Resolves the install root and every path the update touches on the unit (``realpath``; a
    path that leads out of the root through a symlink is refused, as
    :meth:`fleet.ssh.UnitSession.resolve` does), reads the ``current``/``previous`` links, the
    update journal, whether the version is installed, the sizes of files already staged and
    ``df``, and creates the staging directories when an upload will be needed.
``install``
    The registry's trusted signing keys written into ``etc/trusted-keys/`` where missing or
    different (:func:`trust_lines`: a unit that missed a key rotation learns the new key before
    it checks a bundle signed with it; keys are never removed), ``bin/verify-bundle`` (SHA-256 of every file + Ed25519 signature; on refusal a staged copy
    is deleted), the move into ``models/<kind>/<version>/``, the journal (phase ``switching``),
    the ``previous``/``current`` links and the journal (phase ``switched``). Marker lines
    (``@verified``, ``@moved``, ``@journal``, ``@switched``) say how far it got.
``switch``
    The links and the journal ``switched`` alone (resuming an update interrupted mid-switch).
``restart``
    ``bin/restart-voice-service`` and the journal (phase ``restarted``).
``finish``
    Removes the journal and the staging directory after the health gate passed.
``rollback``
    Journal ``rolling_back``, the links back, the restart and the journal removed.

Every value is passed through :func:`shlex.quote`; the scripts are POSIX ``sh`` with GNU
coreutils (``realpath -m``, ``df -P``, ``stat -c``, ``mv -T``), as docs/unit-api.md assumes.
Journal writes are atomic (``.tmp`` + rename), as before.
"""

from __future__ import annotations

import json
import logging
import posixpath
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fleet.errors import RemotePathError, UnitUpdateError

if TYPE_CHECKING:
    from fleet.ssh import UnitSession

logger = logging.getLogger(__name__)

#: Exit status of :func:`prepare_script` when a path is outside the install root.
EXIT_OUTSIDE_ROOT = 21
#: Exit status of :func:`prepare_script` when the install root does not resolve.
EXIT_NO_ROOT = 20
#: Exit status of :func:`install_script` when ``bin/verify-bundle`` refused the bundle.
EXIT_REFUSED = 10
#: Exit status of the install/switch scripts when the move or the links failed.
EXIT_SWITCH_FAILED = 11
#: Exit status of the install and push-trust scripts when the trusted keys cannot be written.
EXIT_TRUST_FAILED = 12

_JOURNAL_MARK = "--journal--"
_DF_MARK = "--df--"

q = shlex.quote


@dataclass
class UnitView:
    """What :func:`prepare_script` found on a unit for one kind and version.

    Paths are the unit's real paths (symlinks resolved), all inside ``root``.
    """

    root: str
    models: str
    staging: str
    journal_path: str
    current: str | None
    previous: str | None
    installed: bool
    #: Size of each requested staged file in bytes, -1 when absent (same order as requested).
    staged_sizes: list[int] = field(default_factory=list)
    #: ``(mount point, available bytes)`` of the staging and models file systems.
    free: list[tuple[str, int]] = field(default_factory=list)
    journal: dict[str, Any] | None = None


def _write_journal(path_var: str, journal: dict[str, Any]) -> str:
    """Shell lines writing ``journal`` atomically to the file named by ``$path_var``."""
    text = json.dumps(journal, sort_keys=True)
    # the directory from the shell itself (no dirname/mkdir processes when it exists: one ``mv``)
    return (f'{{ [ -d "${{{path_var}%/*}}" ] || mkdir -p -- "${{{path_var}%/*}}"; }} && printf %s {q(text)} '
            f'> "${path_var}.tmp" && mv -f -- "${path_var}.tmp" "${path_var}"')


def _link_lines(current: str, previous: str | None) -> str:
    """``previous`` then ``current``, each atomically (``ln -sfn`` to ``.tmp`` + ``mv -T``); run in
    the models directory."""
    lines = []
    if previous:
        lines.append(f"ln -sfn -- {q(previous)} previous.tmp && mv -T -- previous.tmp previous")
    lines.append(f"ln -sfn -- {q(current)} current.tmp && mv -T -- current.tmp current")
    return " && ".join(lines)


def prepare_script(install_root: str, kind: str, version: str | None, names: list[str], *,
                   mkdirs: bool) -> str:
    """The ``prepare`` phase (see the module docstring) for ``names`` (bundle-relative files).

    ``version`` None: only the kind's links and journal (``staging`` is then ``staging/<kind>``).
    ``mkdirs``: create ``staging/<kind>/<version>/`` and the files' subdirectories when the version
    is neither current nor installed (an upload will follow). Seven processes or fewer on the unit.

    Raises
    ------
    UnitUpdateError
        A name holds a newline (the script's output is line-based; bundles never do).
    """
    if any("\n" in n for n in [install_root, kind, version or "", *names]):
        raise UnitUpdateError(f"a path of {kind} {version} holds a newline; refusing it")
    staging_rel = f"staging/{kind}/{version}" if version else f"staging/{kind}"
    rels = [f"models/{kind}", staging_rel, f"run/update-{kind}.json",
            *(posixpath.join(staging_rel, n) for n in names)]
    dirs = sorted({posixpath.dirname(n) for n in names if posixpath.dirname(n)})
    lines = [
        "set -u",
        f"rr=$(realpath -e -- {q(install_root)}) || {{ echo \"install root {install_root} cannot be resolved "
        f"on the unit; check SPEAKEROPS_SSH_INSTALL_ROOT\" >&2; exit {EXIT_NO_ROOT}; }}",
        # the unit's real path of every path the update touches; one that leads out is refused
        "paths=$(realpath -m -- " + " ".join(f'"$rr"/{q(r)}' for r in rels) + ") || exit 1",
        "n=0",
        "while IFS= read -r p; do",
        '    case "$p" in "$rr"|"$rr"/*) ;; *) echo "$p is outside the install root $rr (a symlink leads out); '
        f'refusing it" >&2; exit {EXIT_OUTSIDE_ROOT};; esac',
        '    n=$((n + 1)); case $n in 1) md=$p;; 2) st=$p;; 3) jr=$p;; esac',
        "done <<EOF",
        "$paths",
        "EOF",
        'printf "root %s\\nmodels %s\\nstaging %s\\njournal %s\\n" "$rr" "$md" "$st" "$jr"',
        'find "$md" -maxdepth 1 \\( -name current -o -name previous \\) -type l -printf "%f %l\\n" 2>/dev/null',
    ]
    if version:
        lines.append(f'[ -f "$md"/{q(version)}/manifest.json ] && echo installed')
        if mkdirs:
            made = " ".join(['"$st"'] + [f'"$st"/{q(d)}' for d in dirs])
            cur = '"$(readlink -- "$md/current" 2>/dev/null)"'
            lines.append(f'[ -f "$md"/{q(version)}/manifest.json ] || [ {cur} = {q(version)} ] || '
                         f"mkdir -p -- {made} || exit 1")
        lines.append('find "$st" -type f -printf "size %s %P\\n" 2>/dev/null')
    lines += [
        # df of the nearest existing ancestors of the staging and models directories
        'ex() { p=$1; while [ ! -e "$p" ]; do p=${p%/*}; [ -n "$p" ] || p=/; done; printf %s "$p"; }',
        f'echo {_DF_MARK}',
        'df -Pk -- "$(ex "$st")" "$(ex "$md")"',
        f'echo {_JOURNAL_MARK}',
        '[ -f "$jr" ] && cat -- "$jr"',
        "exit 0",
    ]
    return "\n".join(lines) + "\n"


def parse_prepare(serial: str, status: int, stdout: str, stderr: str, names: list[str] | None = None) -> UnitView:
    """Parse :func:`prepare_script`'s output; ``names`` as given to it (for ``staged_sizes``).

    Raises
    ------
    RemotePathError
        The root does not resolve, or a path leads out of it.
    UnitUpdateError
        The script failed otherwise.
    """
    if status in (EXIT_NO_ROOT, EXIT_OUTSIDE_ROOT):
        raise RemotePathError(f"{serial}: {stderr.strip()}")
    if status != 0:
        raise UnitUpdateError(f"{serial}: inspecting the unit failed (exit {status}): "
                              f"{stderr.strip() or stdout.strip()}")
    head, _, rest = stdout.partition(_DF_MARK + "\n")
    df_text, _, journal_text = rest.partition(_JOURNAL_MARK + "\n")
    kv: dict[str, str] = {}
    links: dict[str, str] = {}
    sizes: dict[str, int] = {}
    for line in head.splitlines():
        key, _, value = line.partition(" ")
        if key == "size":
            size, _, name = value.partition(" ")
            sizes[name] = int(size) if size.isdigit() else -1
        elif key in ("current", "previous"):
            links[key] = value
        else:
            kv[key] = value
    free: list[tuple[str, int]] = []
    for line in df_text.splitlines()[1:]:
        cols = line.split(None, 5)
        if len(cols) == 6 and cols[3].isdigit():
            free.append((cols[5], int(cols[3]) * 1024))
    journal = None
    if journal_text.strip():
        try:
            data = json.loads(journal_text)
            journal = data if isinstance(data, dict) else None
        except ValueError:
            logger.warning("%s: unreadable update journal %s, ignored", serial, kv.get("journal"))

    def link(name: str) -> str | None:
        value = links.get(name, "").rstrip("/")
        return posixpath.basename(value) if value else None

    return UnitView(root=kv["root"], models=kv["models"], staging=kv["staging"], journal_path=kv["journal"],
                    current=link("current"), previous=link("previous"), installed="installed" in kv,
                    staged_sizes=[sizes.get(n, -1) for n in names or []], free=free, journal=journal)


def trust_lines(root_expr: str, keys: Mapping[str, bytes]) -> str:
    """Shell lines writing each ``{key_id: public PEM}`` to ``<root>/etc/trusted-keys/<key_id>.pub``
    where it is missing or different (atomically: ``.tmp`` + rename); print ``@trusted <n written>``.

    ``root_expr`` is a shell word for the unit's real install root (quoted path or ``"$rr"``); the
    directory must resolve inside it (a symlink leading out is refused, exit
    :data:`EXIT_TRUST_FAILED`). Nothing is ever removed: keys of earlier rotations stay trusted.

    Raises
    ------
    UnitUpdateError
        A key id that is not 16 hex digits, or a PEM that is not a public key.
    """
    if not keys:
        return ""
    lines = [f"td=$(realpath -m -- {root_expr}/etc/trusted-keys) || exit {EXIT_TRUST_FAILED}",
             f'case "$td" in {root_expr}/*) ;; *) echo "$td is outside the install root (a symlink leads out); '
             f'refusing to write trusted keys there" >&2; exit {EXIT_TRUST_FAILED};; esac',
             "tw=0"]
    for kid, pem in sorted(keys.items()):
        text = pem.decode("ascii") if isinstance(pem, bytes) else str(pem)
        if not re.fullmatch(r"[0-9a-f]{16}", kid) or not text.startswith("-----BEGIN PUBLIC KEY-----"):
            raise UnitUpdateError(f"refusing to push trusted key {kid!r}: not a key id and PEM public key")
        f, tmp = f'"$td"/{kid}.pub', f'"$td"/.{kid}.pub.tmp'
        lines.append(f'[ "$(cat -- {f} 2>/dev/null)" = "$(printf %s {q(text)})" ] || '
                     f"{{ mkdir -p -- \"$td\" && printf %s {q(text)} > {tmp} && mv -f -- {tmp} {f} "
                     f"&& tw=$((tw + 1)); }} || {{ echo \"cannot write the trusted key {kid} into $td\" >&2; "
                     f"exit {EXIT_TRUST_FAILED}; }}")
    lines.append('echo "@trusted $tw"')
    return "\n".join(lines)


def push_trust_script(install_root: str, keys: Mapping[str, bytes]) -> str:
    """A script that resolves the install root and runs :func:`trust_lines` (``speakerops keys
    push-trust``); exit :data:`EXIT_NO_ROOT` when the root does not resolve."""
    return (f"set -u\nrr=$(realpath -e -- {q(install_root)}) || {{ echo \"install root {install_root} cannot be "
            f"resolved on the unit; check SPEAKEROPS_SSH_INSTALL_ROOT\" >&2; exit {EXIT_NO_ROOT}; }}\n"
            + (trust_lines('"$rr"', keys) or 'echo "@trusted 0"') + "\n")


def install_script(view: UnitView, version: str, source: str, verify_bundle: str,
                   journal: dict[str, Any], trusted_keys: Mapping[str, bytes] | None = None) -> str:
    """The ``install`` phase: trusted keys (:func:`trust_lines`), verify ``source``, move it into
    place (if staged), journal, switch.

    ``journal`` is written with phase ``switching`` before the links change and ``switched`` after.
    """
    installed = posixpath.join(view.models, version)
    staged = source != installed
    lines = [
        "set -u",
        f"jr={q(view.journal_path)}",
        *([trust_lines(q(view.root), trusted_keys)] if trusted_keys else []),
        f"if ! {q(verify_bundle)} {q(source)}; then",
        f"    {'rm -rf -- ' + q(source) if staged else ':'}  # the next attempt uploads it again",
        f"    exit {EXIT_REFUSED}",
        "fi",
        "echo @verified",
    ]
    if staged:
        gone = f"[ ! -e {q(installed)} ] && [ ! -L {q(installed)} ]"  # usually: no rm process
        lines += [f"{{ [ -d {q(view.models)} ] || mkdir -p -- {q(view.models)}; }} && {{ {gone} || rm -rf -- "
                  f"{q(installed)}; }} && mv -T -- {q(source)} {q(installed)} "
                  f"|| exit {EXIT_SWITCH_FAILED}",
                  "echo @moved"]
    lines += [_write_journal("jr", {**journal, "phase": "switching"}) + f" || exit {EXIT_SWITCH_FAILED}",
              "echo @journal",
              switch_lines(view, version, journal)]
    return "\n".join(lines) + "\n"


def switch_lines(view: UnitView, version: str, journal: dict[str, Any]) -> str:
    """Links (``previous`` → the journal's ``from_current``, ``current`` → ``version``) and the
    journal ``switched``; prints ``@switched``. Needs ``$jr`` set."""
    return (f"cd -- {q(view.models)} && {_link_lines(version, journal.get('from_current'))} "
            f"|| exit {EXIT_SWITCH_FAILED}\n"
            + _write_journal("jr", {**journal, "phase": "switched"}) + f" || exit {EXIT_SWITCH_FAILED}\n"
            "echo @switched")


def switch_script(view: UnitView, version: str, journal: dict[str, Any]) -> str:
    """The ``switch`` phase alone (an update interrupted between the journal and the links)."""
    return f"set -u\njr={q(view.journal_path)}\n{switch_lines(view, version, journal)}\n"


def restart_script(view: UnitView, journal: dict[str, Any]) -> str:
    """The ``restart`` phase: restart the voice service, then journal ``restarted``."""
    restart = posixpath.join(view.root, "bin", "restart-voice-service")
    return (f"set -u\njr={q(view.journal_path)}\n{q(restart)} || exit $?\n"
            + _write_journal("jr", {**journal, "phase": "restarted"}) + "\necho @restarted\n")


def finish_script(view: UnitView) -> str:
    """The ``finish`` phase: the journal and the staging directory are removed."""
    return f"rm -f -- {q(view.journal_path)} && rm -rf -- {q(view.staging)}\n"


def rollback_script(view: UnitView, journal: dict[str, Any], reason: str) -> str:
    """The ``rollback`` phase: journal ``rolling_back``; ``current``/``previous`` back to the journal's
    ``from_current``/``from_previous`` and a restart (when there was a current version); journal
    removed. Prints ``@rolled_back``. A failure leaves the journal ``rolling_back``: the next
    update finishes it."""
    rolling = {**journal, "phase": "rolling_back", "reason": reason}
    lines = ["set -u", f"jr={q(view.journal_path)}", _write_journal("jr", rolling) + " || exit 1"]
    old = journal.get("from_current")
    if old:
        restart = posixpath.join(view.root, "bin", "restart-voice-service")
        lines += [f"( cd -- {q(view.models)} && {_link_lines(old, journal.get('from_previous'))} ) || exit 1",
                  f"{q(restart)} || exit $?"]
    lines += ['rm -f -- "$jr"', "echo @rolled_back"]
    return "\n".join(lines) + "\n"


def prepare(s: UnitSession, kind: str, version: str | None, names: list[str], *, mkdirs: bool,
             timeout_s: float | None = None) -> UnitView:
    """Run the ``prepare`` phase script on session ``s`` and parse what it found (errors as
    :func:`parse_prepare`, and :meth:`fleet.ssh.UnitSession.run_script`'s)."""
    res = s.run_script(prepare_script(s.target.install_root, kind, version, names, mkdirs=mkdirs), timeout_s,
                label=f"prepare {kind} {version or ''}".rstrip())
    return parse_prepare(s.target.serial, res.status, res.stdout, res.stderr, names)


def run_rollback(s: UnitSession, view: UnitView, journal: dict[str, Any], reason: str,
                  timeout_s: float) -> None:
    """Run the ``rollback`` phase script; raises UnitUpdateError if it failed."""
    res = s.run_script(rollback_script(view, journal, reason), timeout_s, label="rollback")
    if res.status != 0 or "@rolled_back" not in res.stdout:
        raise UnitUpdateError(f"{s.target.serial}: the rollback script failed (exit {res.status}): "
                              f"{res.stderr.strip() or res.stdout.strip()}")
