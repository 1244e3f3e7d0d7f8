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
