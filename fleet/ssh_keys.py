"""Which SSH client keys :class:`fleet.ssh.SshConnector` logs in with, and where they come from.

In order of precedence:

1. ``SshSettings.client_key_path`` (``SPEAKEROPS_SSH_CLIENT_KEY_PATH``): the user's own key file,
   e.g. an OpenSSH key with its own passphrase (``SPEAKEROPS_SSH_CLIENT_KEY_PASSPHRASE``) or the
   simulator's ``<sim data dir>/client_key``. SpeakerOps reads it, never writes one.
2. The secret store (:mod:`fleet.keys`): the current key, then the previous one while a rotation
   runs (``speakerops keys rotate-ssh``). Reloaded whenever the store's index changes, so a
   long-running console keeps reaching units while another process rotates the key.
3. A legacy plain ``<data_dir>/client_key`` (with a warning to import it).
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

import paramiko

from fleet.errors import SshAuthFailed
from fleet.settings import SshSettings

logger = logging.getLogger(__name__)


class ClientKeys:
    """The client keys of one connector (see the module docstring); thread-safe.

    Parameters
    ----------
    settings
        SSH settings (``client_key_path``, ``client_key_passphrase``).
    data_dir
        SpeakerOps data directory (the store ``<data_dir>/keys``); None: ``CoreSettings().data_dir``
        when first needed.
    key_store
        A :class:`fleet.keys.SecretStore` to use instead of ``<data_dir>/keys``.
    """

    def __init__(self, settings: SshSettings, data_dir: Path | None = None, key_store: Any = None) -> None:
        self.settings = settings
        #: The key file in use, or None when the keys come from the secret store.
        self.key_path: Path | None = Path(settings.client_key_path) if settings.client_key_path else None
        self._data_dir = Path(data_dir) if data_dir is not None else None
        self._key_store = key_store
        self._keys: list[tuple[str, paramiko.PKey]] | None = None
        self._version: Any = None
        self._lock = threading.Lock()

    @property
    def data_dir(self) -> Path:
        if self._data_dir is None:
            from speakerops.settings import CoreSettings

            self._data_dir = CoreSettings().data_dir
        return self._data_dir

    @property
    def key_store(self) -> Any:
        """The :class:`fleet.keys.SecretStore` of ``data_dir``."""
        if self._key_store is None:
            from fleet.keys import SecretStore

            self._key_store = SecretStore(self.data_dir)
        return self._key_store

    def trusted_signing_keys(self) -> dict[str, bytes]:
        """``{key_id: public PEM}`` units should trust (public data; empty if unavailable, logged)."""
        from fleet.keys import SecretStoreError

        try:
            return self.key_store.trusted_signing_keys()
        except SecretStoreError as exc:
            logger.warning("trusted signing keys unavailable, none pushed: %s", exc)
            return {}

    def keys(self) -> list[tuple[str, paramiko.PKey]]:
        """``(label, key)`` pairs in the order to try them (labels name the file or fingerprint).

        Raises
        ------
        SshAuthFailed
            No key anywhere, an unreadable key file, or a store that cannot be opened (the message
            says which setting to fix).
        """
        from fleet.keys import SecretStoreError, to_paramiko

        if self.key_path is not None:
            with self._lock:
                if self._keys is None:
                    self._keys = [(str(self.key_path), self._key_file(self.key_path))]
                return self._keys
        store = self.key_store
        version = store.version()
        with self._lock:
            if self._keys is None or version != self._version:
                try:
                    keys = [(f"{info.fingerprint} (store key {info.key_id})", to_paramiko(k))
                            for info, k in store.ssh_private_keys()]
                except SecretStoreError as exc:
                    raise SshAuthFailed(f"cannot open the SSH client key: {exc}") from exc
                if not keys:
                    legacy = self.data_dir / "client_key"
                    if not legacy.exists():
                        raise SshAuthFailed("no SSH client key: import the key your units accept (speakerops keys "
                                            "import-ssh FILE) or name your own key file in "
                                            "SPEAKEROPS_SSH_CLIENT_KEY_PATH")
                    logger.warning("using the plain key file %s; move it into the secret store with "
                                   "`speakerops keys import-ssh %s` and delete it", legacy, legacy)
                    keys = [(str(legacy), self._key_file(legacy))]
                self._keys, self._version = keys, version
            return self._keys

    def _key_file(self, path: Path) -> paramiko.PKey:
        try:
            return paramiko.PKey.from_path(path, self.settings.client_key_passphrase)
        except (OSError, ValueError, TypeError, paramiko.SSHException) as exc:
            raise SshAuthFailed(f"cannot read the SSH client key {path} ({exc}); set SPEAKEROPS_SSH_CLIENT_KEY_PATH "
                                "to a readable private key (and SPEAKEROPS_SSH_CLIENT_KEY_PASSPHRASE if it has "
                                "one), or import the key into the secret store (speakerops keys import-ssh "
                                "FILE)") from exc
