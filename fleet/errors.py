"""Typed errors of the fleet core. Each message says what was wrong and what to do."""

from __future__ import annotations


class FleetError(Exception):
    """Base class of the fleet core's errors."""


class InventoryFormatError(FleetError):
    """An inventory file cannot be read at all (wrong format, encoding, or not a file)."""


class HealthReportError(FleetError):
    """A unit's ``/v1/health`` answer is not a valid heartbeat (docs/unit-api.md)."""


class UnitUnreachable(FleetError):
    """A unit did not answer: refused or dropped connection, timeout, or an HTTP error."""


class HostKeyUnknown(FleetError):
    """A unit presented an SSH host key the known-hosts store has not approved yet.

    The key is recorded as pending; an operator checks ``fingerprint`` against the unit (its
    console, its provisioning record) and approves it: ``speakerops units approve-host-key SERIAL
    FINGERPRINT``.
    """

    def __init__(self, message: str, *, serial: str, fingerprint: str) -> None:
        super().__init__(message)
        self.serial = serial
        self.fingerprint = fingerprint


class HostKeyChanged(FleetError):
    """A unit presented a host key other than the approved one: always refused (possible
    man-in-the-middle, or a re-imaged unit that needs its new key approved with ``--replace``)."""

    def __init__(self, message: str, *, serial: str, fingerprint: str, expected: str) -> None:
        super().__init__(message)
        self.serial = serial
        self.fingerprint = fingerprint
        self.expected = expected


class SshAuthFailed(FleetError):
    """The unit refused the client key (wrong key, or the unit's authorized_keys lacks it)."""


class RemoteCommandError(FleetError):
    """A command on a unit exited non-zero or did not finish within its timeout."""

    def __init__(self, message: str, *, status: int | None = None, stdout: str = "",
                 stderr: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.stdout = stdout
        self.stderr = stderr


class RemotePathError(FleetError):
    """A remote path escapes the unit's install root (``..``, absolute elsewhere, a symlink)."""


class UnitUpdateError(FleetError):
    """One step of installing a model version on a unit failed (the message names the step)."""


class RegistryError(FleetError):
    """A model-registry operation was refused: unknown version, duplicate, bad bundle, gate."""


class SignatureError(FleetError):
    """A bundle's manifest signature is missing, malformed, from an untrusted key, or wrong."""
