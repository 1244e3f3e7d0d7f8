"""The console's known-hosts store (table ``known_hosts``): SSH host keys units presented, approved
by an operator or refused (re-exported by :mod:`fleet.ssh`, which checks every connection with it).

An unknown host key raises :class:`~fleet.errors.HostKeyUnknown` (carrying the fingerprint) and
is recorded ``pending`` until an operator approves it (:func:`approve`, ``speakerops units
approve-host-key SERIAL FP``); a key other than the approved one raises
:class:`~fleet.errors.HostKeyChanged` and is always refused. Trust on first use is an explicit
opt-in for labs.
"""

from __future__ import annotations

import base64
import hashlib
import logging

import paramiko
from sqlalchemy import select as sql_select
from sqlalchemy.orm import Session, sessionmaker

from fleet.errors import FleetError, HostKeyChanged, HostKeyUnknown
from fleet.models import KnownHost
from speakerops import audit
from speakerops.timeutil import Clock, utc_now

logger = logging.getLogger(__name__)

TOFU_ACTOR = "trust-on-first-use"


def fingerprint_of(key: paramiko.PKey) -> str:
    """OpenSSH SHA256 fingerprint of a host key: ``SHA256:<base64, no padding>``."""
    return "SHA256:" + base64.b64encode(hashlib.sha256(key.asbytes()).digest()).decode().rstrip("=")


def _normalize_fingerprint(fp: str) -> str:
    fp = fp.strip()
    return fp if fp.startswith("SHA256:") else "SHA256:" + fp


class KnownHostsStore:
    """The console's known-hosts store over the ``known_hosts`` table.

    Parameters
    ----------
    session_factory
        Each check runs (and commits) in its own short transaction, so a pending key is recorded
        even though the connection is refused.
    trust_on_first_use
        Approve the first key a unit presents (labs only); recorded with actor
        ``trust-on-first-use`` in the audit trail.
    """

    def __init__(self, session_factory: sessionmaker[Session], clock: Clock = utc_now,
                 trust_on_first_use: bool = False) -> None:
        self._sf = session_factory
        self._clock = clock
        self.trust_on_first_use = trust_on_first_use

    def check(self, serial: str, host: str, port: int, key: paramiko.PKey) -> None:
        """Accept the key ``serial`` presented, or raise.

        Raises
        ------
        HostKeyUnknown
            No approved key for the unit yet (this one is now pending).
        HostKeyChanged
            The unit has an approved key and this is another one.
        """
        fp = fingerprint_of(key)
        now = self._clock()
        with self._sf.begin() as session:
            rows = session.scalars(sql_select(KnownHost).where(KnownHost.serial == serial)).all()
            approved = next((r for r in rows if r.state == "approved"), None)
            row = next((r for r in rows if r.fingerprint == fp), None)
            if row is None:
                row = KnownHost(serial=serial, host=host, port=port, key_type=key.get_name(),
                                key_base64=key.get_base64(), fingerprint=fp, state="pending",
                                first_seen_at=now, last_seen_at=now)
                session.add(row)
            row.host, row.port, row.last_seen_at = host, port, now
            if approved is not None and approved.fingerprint == fp:
                return
            if approved is not None:
                row.state = "refused"
                error: FleetError = HostKeyChanged(
                    f"the host key of {serial} at {host}:{port} CHANGED: it presented {fp}, the approved "
                    f"key is {approved.fingerprint}. Refused (possible man-in-the-middle). If the unit "
                    f"was re-imaged, check the new fingerprint on the unit and approve it with "
                    f"`speakerops units approve-host-key {serial} {fp} --replace`.",
                    serial=serial, fingerprint=fp, expected=approved.fingerprint)
            elif self.trust_on_first_use:
                row.state, row.approved_by, row.approved_at = "approved", TOFU_ACTOR, now
                audit.record(session, "host_key.approve", "unit", serial, before=None,
                             after={"fingerprint": fp, "host": host, "port": port},
                             reason="trust on first use (lab opt-in)", actor=TOFU_ACTOR, clock=self._clock)
                logger.warning("trusting %s's host key %s on first use", serial, fp)
                return
            else:
                error = HostKeyUnknown(
                    f"the host key of {serial} at {host}:{port} is not approved yet: {fp}. Check it "
                    f"against the unit, then `speakerops units approve-host-key {serial} {fp}`.",
                    serial=serial, fingerprint=fp)
        raise error


def approve(session: Session, serial: str, fingerprint: str, actor: str | None = None, *,
            replace: bool = False, clock: Clock = utc_now) -> KnownHost:
    """Approve a host key a unit presented (it must have been seen: connect once first).

    Parameters
    ----------
    fingerprint
        ``SHA256:…`` as shown by the refusal (the prefix may be left out).
    replace
        Needed when the unit already has another approved key (a re-imaged unit); the old key
        becomes ``refused``.

    Raises
    ------
    FleetError
        The key was never seen for this unit, or another key is approved and ``replace`` is False.
    """
    fp = _normalize_fingerprint(fingerprint)
    rows = session.scalars(sql_select(KnownHost).where(KnownHost.serial == serial)).all()
    row = next((r for r in rows if r.fingerprint == fp), None)
    if row is None:
        seen = ", ".join(f"{r.fingerprint} ({r.state})" for r in rows) or "none"
        raise FleetError(f"no host key {fp} has been seen for unit {serial} (seen: {seen}); connect "
                         "to the unit once (e.g. start a rollout) so its key is recorded, then approve it")
    others = [r for r in rows if r.state == "approved" and r is not row]
    if others and not replace:
        raise FleetError(f"unit {serial} already has the approved key {others[0].fingerprint}; pass "
                         "--replace (replace=True) after checking the unit was re-imaged")
    before = {"approved": [r.fingerprint for r in rows if r.state == "approved"]}
    for r in others:
        r.state = "refused"
    now = clock()
    row.state, row.approved_by, row.approved_at = "approved", actor or audit.current_actor(session), now
    audit.record(session, "host_key.approve", "unit", serial, before=before,
                 after={"approved": [fp], "host": row.host, "port": row.port},
                 reason="replaces " + ", ".join(r.fingerprint for r in others) if others else None,
                 actor=row.approved_by, clock=clock)
    return row


def list_host_keys(session: Session, serial: str | None = None) -> list[KnownHost]:
    """Known host keys (all units, or one), by serial then first seen."""
    q = sql_select(KnownHost).order_by(KnownHost.serial, KnownHost.first_seen_at)
    if serial is not None:
        q = q.where(KnownHost.serial == serial)
    return list(session.scalars(q))
