"""The health check of a unit's update gate: one ``GET /v1/health`` to the unit's agent
(re-exported by :mod:`fleet.unit_update`)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

logger = logging.getLogger(__name__)


def default_health_check(agent_url_for: Callable[[str], str], *, request_timeout_s: float = 3.0,
                         healthy_states: tuple[str, ...] = ("ok", "degraded"),
                         client: Any = None) -> Callable[[str, str, str], bool]:
    """A health check that asks the unit agent once: ``GET <agent_url>/v1/health`` (docs/unit-api.md).

    Healthy means ``models[kind] == version`` and ``state`` in ``healthy_states`` (``updating``, the
    first seconds after a restart, is not yet healthy; the gate polls again). Connection errors,
    HTTP errors and malformed bodies count as unhealthy.

    Parameters
    ----------
    agent_url_for
        ``serial -> agent base URL`` (the inventory's ``agent_url``).
    client
        An ``httpx.Client`` to reuse; one is made per check otherwise.

    Notes
    -----
    ``/v1/health`` counts requests since the previous answer, so a health-gate poll takes those
    counts from the collector's next heartbeat for the few seconds of the gate.
    """
    import httpx

    def check(serial: str, kind: str, version: str) -> bool:
        url = agent_url_for(serial).rstrip("/") + "/v1/health"
        try:
            if client is not None:
                resp = client.get(url, timeout=request_timeout_s)
            else:
                resp = httpx.get(url, timeout=request_timeout_s)
            resp.raise_for_status()
            body = resp.json()
            ok = (body.get("models") or {}).get(kind) == version and body.get("state") in healthy_states
            logger.debug("%s health: %s %s state=%s → %s", serial, kind, (body.get("models") or {}).get(kind),
                         body.get("state"), ok)
            return bool(ok)
        except (httpx.HTTPError, ValueError, AttributeError) as exc:
            logger.debug("%s health check failed: %s", serial, exc)
            return False

    return check

