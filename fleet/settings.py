"""Fleet settings (environment prefix ``SPEAKEROPS_COLLECTOR_``).

Defaults and where they come from:

* ``interval_s = 10``: the poll interval the monitoring requirements name (10,000 units every 10 s).
* ``offline_after_factor = 1.5``: a unit is offline after missing 1.5 × its poll interval, as AWS
  IoT counts a device disconnected after 1.5 × its keep-alive (FIELD_NOTES).
* ``concurrency = 200``: in-flight polls; httpx over the aiohttp transport holds ~2,000 polls/s
  at concurrency 20–100 on 2 cores (FIELD_NOTES), so 200 leaves room for slow units.
* ``connect_timeout_s = 2``, ``read_timeout_s = 3``: a healthy unit on a LAN answers in
  milliseconds; a poll must end well within one interval.
* ``retries = 2`` with exponential backoff from ``backoff_s = 0.2``: transient connection errors
  only; a timeout is not retried (it already used its budget).
* ``max_body_bytes = 1 MiB``: docs/unit-api.md; larger answers are refused unread.
* ``max_pending_rows = 500,000``: heartbeats kept in memory while the database is unavailable
  (50 cycles of 10,000 units); beyond it the oldest are dropped and counted in the log.
"""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class CollectorSettings(BaseSettings):
    """Tuning of the heartbeat collector; see the module docstring for each default's source."""

    model_config = SettingsConfigDict(env_prefix="SPEAKEROPS_COLLECTOR_", extra="ignore")

    interval_s: float = Field(10.0, gt=0, description="poll interval, seconds")
    offline_after_factor: float = Field(1.5, ge=1.0)
    concurrency: int = Field(200, ge=1, le=10_000)
    connect_timeout_s: float = Field(2.0, gt=0)
    read_timeout_s: float = Field(3.0, gt=0)
    retries: int = Field(2, ge=0, le=10)
    backoff_s: float = Field(0.2, ge=0)
    max_body_bytes: int = Field(1 << 20, ge=1024)
    max_pending_rows: int = Field(500_000, ge=1000)

    @property
    def offline_after_s(self) -> float:
        """Seconds without a heartbeat after which a unit is offline."""
        return self.interval_s * self.offline_after_factor


class SshSettings(BaseSettings):
    """How SpeakerOps talks SSH to units (environment prefix ``SPEAKEROPS_SSH_``).

    Defaults and where they come from:

    * ``client_key_path = None`` → the SSH key in the secret store (:mod:`fleet.keys`: OS keyring or
      an encrypted file; ``speakerops keys import-ssh|rotate-ssh``), current then previous during a
      rotation. A path names the user's own key file instead (e.g. the simulator's
      ``<sim data dir>/client_key``, or an OpenSSH key with its own passphrase in
      ``client_key_passphrase``). With neither, a legacy ``<data_dir>/client_key`` is still read.
    * ``authorized_keys_path = None``: where ``speakerops keys rotate-ssh`` edits a unit's authorized
      keys — the path the unit names in ``<install root>/etc/ssh-authorized-keys`` (the simulator's
      units do), else ``~/.ssh/authorized_keys`` (OpenSSH's default ``AuthorizedKeysFile``).
      ``{serial}`` and ``{root}`` (the install root) are replaced; ``~/`` is the login's home.
    * ``connect_timeout_s = 10``: TCP connect + SSH banner + auth on a LAN take well under 1 s;
      10 s leaves room for a busy unit without stalling a rollout group for long.
    * ``command_timeout_s = 60``: the longest unit-side command is ``verify-bundle`` hashing a
      bundle (~50 MB at > 200 MB/s on a unit's CPU: well under a second).
    * ``window_size = 64 MiB``, ``max_packet_size = 32 KiB``: paramiko's defaults are 2 MiB /
      32 KiB; a larger window keeps downloads streaming (OpenSSH's own channel window is 2 MiB and
      its maximum packet 32 KiB, which bound uploads).
    * ``sftp_request_bytes = 255 KiB``: SFTP write size per request; OpenSSH's sftp-server accepts
      messages up to 256 KiB (``SFTP_MAX_MSG_LENGTH``), paramiko writes 32 KiB by default: fewer,
      larger requests cost less Python per byte (FIELD_NOTES: transfer settings decide how close
      a rollout gets to ``scp``).
    * ``install_root = "/opt/speaker"`` (docs/unit-api.md "On-unit layout"): a template where
      ``{serial}`` stands for the unit's serial; the simulator's units live in
      ``<sim data dir>/units/{serial}/root``.
    * ``trust_on_first_use = False``: unknown host keys need an operator's approval; TOFU is an
      explicit opt-in for labs only.
    """

    model_config = SettingsConfigDict(env_prefix="SPEAKEROPS_SSH_", extra="ignore")

    client_key_path: str | None = Field(None, description="private key file; None: the secret store's key")
    client_key_passphrase: str | None = Field(None, description="passphrase of client_key_path, if it has one")
    authorized_keys_path: str | None = Field(None, description="units' authorized keys file for rotate-ssh; "
                                             "None: as the unit names it, else ~/.ssh/authorized_keys")
    connect_timeout_s: float = Field(10.0, gt=0)
    command_timeout_s: float = Field(60.0, gt=0)
    window_size: int = Field(64 << 20, ge=1 << 15)
    max_packet_size: int = Field(32 << 10, ge=1 << 12)
    sftp_request_bytes: int = Field(255 << 10, ge=1 << 12, le=(256 << 10) - 1024)
    trust_on_first_use: bool = False
    install_root: str = Field("/opt/speaker", description="units' install root; ``{serial}`` is replaced "
                              "by the unit's serial (the simulator: <data_dir>/units/{serial}/root)")
