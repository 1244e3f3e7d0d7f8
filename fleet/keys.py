"""The secret store: the fleet SSH client key(s) and the registry's Ed25519 signing key.

Where the private keys live (the *backend*, chosen when the store is first written and kept in its
index; ``SPEAKEROPS_KEYS_BACKEND=keyring|file`` forces one):

``keyring``
    The OS keyring through the ``keyring`` package (Secret Service, KWallet, macOS Keychain,
    Windows Credential Locker), service ``speakerops``, when it has a real backend.
``file``
    ``<data_dir>/keys/<entry>.pem`` (directory 0700, files 0600), each **encrypted** with the
    passphrase in ``SPEAKEROPS_KEY_PASSPHRASE``: scrypt (n = 2**15, r = 8, p = 1: RFC 7914's
    interactive figures, ~0.1 s and 32 MiB here) derives an AES-256-GCM key from the passphrase and
    a random 16-byte salt; the PKCS#8 DER of the key is sealed with the entry's name as associated
    data (a file copied over another entry does not open). The file is armoured as
    ``-----BEGIN SPEAKEROPS ENCRYPTED KEY-----`` + JSON + ``-----END …`` and holds no private
    key in plain text.

No keyring and no passphrase: creating or reading a key is **refused** with a message naming what
to set — unless ``SPEAKEROPS_KEYS_UNENCRYPTED_LAB=1`` (an explicit lab opt-in; ``speakerops demo``
and the tests set it), which keeps plain PKCS#8 PEM files (0600) and logs a warning each time one
is written. A plain file found while a passphrase is set is encrypted in place on first read.

Entries: ``registry`` — the current signing key; ``ssh-<key_id>`` — SSH client keys. The index
``<data_dir>/keys/index.json`` (0600) holds only public data: the signing keys (current + every
key still trusted, with their public PEM), the SSH keys (current, previous during a rotation, public
OpenSSH line, fingerprint, created, source) and the state of a running SSH key rotation per unit.
Writers hold ``flock`` on ``keys/.lock``.

Errors: :class:`SecretStoreError` (a :class:`~fleet.errors.SignatureError`, so callers that caught
signing-key errors still do) — the message says what was wrong and what to set or run.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from fleet.key_formats import (  # noqa: F401 - re-exported: fleet.keys is where callers find them
    ENVELOPE_BEGIN,
    PASSPHRASE_ENV,
    PrivateKey,
    SecretStoreError,
    load_private_key_file,
    seal,
    ssh_fingerprint,
    ssh_key_id,
    ssh_public_line,
    to_paramiko,
    unseal,
)
from speakerops.timeutil import Clock, utc_now

logger = logging.getLogger(__name__)

LAB_ENV = "SPEAKEROPS_KEYS_UNENCRYPTED_LAB"
BACKEND_ENV = "SPEAKEROPS_KEYS_BACKEND"
KEYRING_SERVICE = "speakerops"
INDEX_FILE = "index.json"
#: Entry name of the current signing key (the name the first KeyStore used: existing stores keep working).
SIGNING_ENTRY = "registry"
_CHECK_PLAINTEXT = b"speakerops key store passphrase check"

Backend = Literal["keyring", "file"]


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def lab_unencrypted() -> bool:
    """True when ``SPEAKEROPS_KEYS_UNENCRYPTED_LAB`` opts in to plain key files (labs, tests, demo)."""
    return _truthy(os.environ.get(LAB_ENV))


def usable_keyring() -> Any | None:
    """The ``keyring`` module if it is installed and has a real backend (not ``fail``/``null``), else None."""
    try:
        import keyring
        from keyring.backends import fail
    except ImportError:
        return None
    try:
        backend = keyring.get_keyring()
    except Exception:  # noqa: BLE001 - a broken keyring config means "not usable"
        return None
    if isinstance(backend, fail.Keyring) or getattr(backend, "priority", 0) <= 0 \
            or "null" in type(backend).__module__:
        return None
    return keyring


@dataclass(frozen=True)
class SshKeyInfo:
    """Public facts of one SSH client key in the store."""

    key_id: str
    public: str
    fingerprint: str
    created_at: str
    source: str

    def as_dict(self) -> dict[str, str]:
        return {"key_id": self.key_id, "public": self.public, "fingerprint": self.fingerprint,
                "created_at": self.created_at, "source": self.source}


def _empty_index(backend: Backend) -> dict[str, Any]:
    return {"format": 1, "backend": backend, "passphrase_check": None,
            "signing": {"current": None, "keys": {}},
            "ssh": {"current": None, "previous": None, "keys": {}, "rotation": None}}


_THREAD_LOCK = threading.RLock()


class SecretStore:
    """The key store of one SpeakerOps data directory (see the module docstring).

    Parameters
    ----------
    data_dir
        SpeakerOps data directory; the store is ``<data_dir>/keys/``.
    use_keyring
        Allow the OS keyring for a new store (default); False: encrypted files.
    clock
        For ``created_at``/rotation times (aware UTC).
    """

    def __init__(self, data_dir: Path, use_keyring: bool = True, *, clock: Clock = utc_now) -> None:
        self.keys_dir = Path(data_dir) / "keys"
        self.index_path = self.keys_dir / INDEX_FILE
        self._clock = clock
        self._use_keyring = use_keyring
        self._backend: Backend | None = None
        self._keyring: Any = None

    # ---- backend and protection
    @property
    def backend(self) -> Backend:
        """``"keyring"`` or ``"file"``: from the index, else ``SPEAKEROPS_KEYS_BACKEND``, else the
        keyring if usable (and allowed), else files. An old store without an index that has
        ``registry.pem`` stays ``file``."""
        if self._backend is None:
            forced = (os.environ.get(BACKEND_ENV) or "").strip().lower()
            recorded = self._read_index().get("backend") if self.index_path.exists() else None
            if recorded in ("keyring", "file"):
                self._backend = recorded
            elif forced in ("keyring", "file"):
                self._backend = forced  # type: ignore[assignment]
            elif (self.keys_dir / f"{SIGNING_ENTRY}.pem").exists() or not self._use_keyring:
                self._backend = "file"
            else:
                self._backend = "keyring" if usable_keyring() is not None else "file"
        if self._backend == "keyring" and self._keyring is None:
            self._keyring = usable_keyring()
            if self._keyring is None:
                raise SecretStoreError(f"the keys of {self.keys_dir} are in the OS keyring, which is not usable now "
                                       "(no backend, or locked): unlock it or install its backend (see "
                                       "`python -m keyring diagnose`)")
        return self._backend

    @property
    def protection(self) -> str:
        """``keyring``, ``passphrase``, ``lab-unencrypted`` or ``none`` (nothing may be written)."""
        if self.backend == "keyring":
            return "keyring"
        if os.environ.get(PASSPHRASE_ENV):
            return "passphrase"
        return "lab-unencrypted" if lab_unencrypted() else "none"

    def _refusal(self, what: str) -> SecretStoreError:
        return SecretStoreError(
            f"cannot {what}: there is no usable OS keyring and {PASSPHRASE_ENV} is not set, and SpeakerOps "
            f"never keeps keys in plain text. Set {PASSPHRASE_ENV} to the passphrase that encrypts "
            f"{self.keys_dir} (or use an OS keyring through the `keyring` package); in a throw-away lab only, "
            f"{LAB_ENV}=1 keeps them unencrypted")

    # ---- index
    @contextlib.contextmanager
    def _locked(self) -> Iterator[dict[str, Any]]:
        """The index, locked against other writers; written back (atomically) on a clean exit."""
        self.keys_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.keys_dir, 0o700)
        with _THREAD_LOCK, open(self.keys_dir / ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                index = self._read_index() if self.index_path.exists() else _empty_index(self.backend)
                before = json.dumps(index, sort_keys=True)
                yield index
                if json.dumps(index, sort_keys=True) != before or not self.index_path.exists():
                    self._write_file(self.index_path, (json.dumps(index, indent=2, sort_keys=True) + "\n").encode())
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _read_index(self) -> dict[str, Any]:
        try:
            data = json.loads(self.index_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return _empty_index(self._backend or "file")
        except (OSError, ValueError) as exc:
            raise SecretStoreError(f"the key store index {self.index_path} is unreadable ({exc}); restore it "
                                   "from a backup (it holds only public keys and rotation state)") from exc
        if not isinstance(data, dict) or data.get("format") != 1:
            raise SecretStoreError(f"{self.index_path} is not a SpeakerOps key index (format 1)")
        return data

    def index(self) -> dict[str, Any]:
        """A copy of the index (public data only; no passphrase needed)."""
        return self._read_index()

    def version(self) -> tuple[int, int] | None:
        """``(mtime_ns, size)`` of the index, or None: changes whenever a key changes."""
        try:
            st = self.index_path.stat()
        except OSError:
            return None
        return st.st_mtime_ns, st.st_size

    def _write_file(self, path: Path, data: bytes) -> None:
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)

    # ---- entries (private keys)
    def _username(self, name: str) -> str:
        return name.replace("ssh-", "ssh-key:", 1) if name.startswith("ssh-") else f"signing-key:{name}"

    def _check_passphrase(self, index: dict[str, Any], passphrase: str) -> None:
        check = index.get("passphrase_check")
        if check is None:
            index["passphrase_check"] = seal(_CHECK_PLAINTEXT, passphrase, "check").decode()
        elif unseal(check.encode(), passphrase, "check", f"the key store {self.keys_dir}") != _CHECK_PLAINTEXT:
            raise SecretStoreError(f"wrong passphrase in {PASSPHRASE_ENV} for {self.keys_dir}")

    def _put(self, index: dict[str, Any], name: str, key: PrivateKey) -> None:
        """Store a private key under ``name`` (inside :meth:`_locked`)."""
        if self.backend == "keyring":
            pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
            self._keyring.set_password(KEYRING_SERVICE, self._username(name), pem.decode())
            return
        passphrase = os.environ.get(PASSPHRASE_ENV)
        path = self.keys_dir / f"{name}.pem"
        if passphrase:
            self._check_passphrase(index, passphrase)
            der = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
            self._write_file(path, seal(der, passphrase, name))
        elif lab_unencrypted():
            logger.warning("%s is set: the key %s is stored unencrypted (mode 0600) in %s — for labs only",
                           LAB_ENV, name, path)
            self._write_file(path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                     serialization.NoEncryption()))
        else:
            raise self._refusal(f"store the key {name}")

    def _get(self, index: dict[str, Any], name: str) -> PrivateKey | None:
        """The private key ``name``, or None if absent (inside :meth:`_locked`)."""
        if self.backend == "keyring":
            value = self._keyring.get_password(KEYRING_SERVICE, self._username(name))
            if not value:
                return None
            return serialization.load_pem_private_key(value.encode(), None)  # type: ignore[return-value]
        path = self.keys_dir / f"{name}.pem"
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        passphrase = os.environ.get(PASSPHRASE_ENV)
        if data.lstrip().startswith(ENVELOPE_BEGIN):
            if not passphrase:
                raise SecretStoreError(f"the key {name} in {path} is encrypted: set {PASSPHRASE_ENV} to the "
                                       "passphrase the key store was created with")
            return serialization.load_der_private_key(unseal(data, passphrase, name, str(path)), None)  # type: ignore[return-value]
        if b"ENCRYPTED PRIVATE KEY" in data:  # written by the first KeyStore (PKCS#8, weak KDF): re-seal
            if not passphrase:
                raise SecretStoreError(f"the key {name} in {path} is encrypted: set {PASSPHRASE_ENV}")
            try:
                key: Any = serialization.load_pem_private_key(data, passphrase.encode())
            except (ValueError, TypeError) as exc:
                raise SecretStoreError(f"cannot open the key {name} in {path} ({exc}); set {PASSPHRASE_ENV} "
                                       "to the passphrase it was created with") from exc
            self._put(index, name, key)
            return key
        try:
            key = serialization.load_pem_private_key(data, None)
        except (ValueError, TypeError) as exc:
            raise SecretStoreError(f"{path} is not a readable key ({exc})") from exc
        if passphrase:
            logger.warning("the key %s in %s was unencrypted: encrypting it now with %s", name, path, PASSPHRASE_ENV)
            self._put(index, name, key)
        elif not lab_unencrypted():
            raise SecretStoreError(f"the key {name} in {path} is stored unencrypted, which SpeakerOps refuses: set "
                                   f"{PASSPHRASE_ENV} (the file is then encrypted on first use), or in a lab "
                                   f"only {LAB_ENV}=1")
        return key

    def _delete(self, name: str) -> None:
        if self.backend == "keyring":
            with contextlib.suppress(Exception):  # keyring raises PasswordDeleteError when absent
                self._keyring.delete_password(KEYRING_SERVICE, self._username(name))
            return
        (self.keys_dir / f"{name}.pem").unlink(missing_ok=True)

    def _require_protection(self, what: str) -> None:
        if self.protection == "none":
            raise self._refusal(what)

    # ---- signing keys
    def signing_key(self, name: str = SIGNING_ENTRY) -> ed25519.Ed25519PrivateKey:
        """The current signing key (``name`` other than ``registry``: a separate, unrotated entry),
        created on first use.

        Raises
        ------
        SecretStoreError
            No protection available (see the module docstring), a wrong passphrase, or not Ed25519.
        """
        from fleet.signing import key_id_of, public_key_pem

        with self._locked() as index:
            key = self._get(index, name)
            if key is None:
                self._require_protection(f"create the signing key {name!r}")
                key = ed25519.Ed25519PrivateKey.generate()
                self._put(index, name, key)
                logger.info("created signing key %s (%s) in the %s store", name, key_id_of(key.public_key()),
                            self.backend)
            if not isinstance(key, ed25519.Ed25519PrivateKey):
                raise SecretStoreError(f"signing key {name!r} is not Ed25519")
            if name == SIGNING_ENTRY:
                kid = key_id_of(key.public_key())
                signing = index["signing"]
                if signing["current"] != kid:  # a new store, an old one without an index, or a crash mid-rotation
                    if signing["current"] is not None:
                        logger.warning("signing key %s is current (the index said %s, which stays trusted)",
                                       kid, signing["current"])
                    signing["keys"].setdefault(kid, {"public_pem": public_key_pem(key.public_key()).decode(),
                                                     "created_at": self._clock().isoformat()})
                    signing["current"] = kid
            return key

    def trusted_signing_keys(self) -> dict[str, bytes]:
        """``{key_id: public PEM}`` of the current signing key and every earlier one still trusted.
        Public data: no passphrase needed. Empty when the store has no signing key yet."""
        if not self.index_path.exists():
            return {}
        keys = self._read_index()["signing"]["keys"]
        return {kid: v["public_pem"].encode() for kid, v in keys.items() if not v.get("retired_at")}

    def rotate_signing(self) -> tuple[str | None, str]:
        """Make a new Ed25519 signing key current; the old one stays trusted (its public key is kept,
        its private key deleted: nothing new is signed with it). Returns ``(old_id, new_id)``.

        Raises
        ------
        SecretStoreError
            As :meth:`signing_key`.
        """
        from fleet.signing import key_id_of, public_key_pem

        old = self.signing_key() if self.index_path.exists() or self._has_entry(SIGNING_ENTRY) else None
        with self._locked() as index:
            self._require_protection("rotate the signing key")
            new = ed25519.Ed25519PrivateKey.generate()
            kid = key_id_of(new.public_key())
            # public half first: a crash after it leaves the new key trusted, the old one current
            index["signing"]["keys"][kid] = {"public_pem": public_key_pem(new.public_key()).decode(),
                                             "created_at": self._clock().isoformat()}
            self._put(index, SIGNING_ENTRY, new)
            index["signing"]["current"] = kid
        old_id = key_id_of(old.public_key()) if old is not None else None
        logger.info("signing key rotated: %s → %s", old_id, kid)
        return old_id, kid

    def _has_entry(self, name: str) -> bool:
        if self.backend == "keyring":
            return bool(self._keyring.get_password(KEYRING_SERVICE, self._username(name)))
        return (self.keys_dir / f"{name}.pem").exists()

    # ---- SSH client keys
    def _ssh_info(self, index: dict[str, Any], key_id: str | None) -> SshKeyInfo | None:
        if key_id is None:
            return None
        v = index["ssh"]["keys"][key_id]
        return SshKeyInfo(key_id, v["public"], v["fingerprint"], v["created_at"], v["source"])

    def ssh_current(self) -> SshKeyInfo | None:
        """The SSH client key new logins use, or None (no key in the store)."""
        index = self._read_index()
        return self._ssh_info(index, index["ssh"]["current"])

    def ssh_previous(self) -> SshKeyInfo | None:
        """The key being rotated away from, kept while a unit has not switched; else None."""
        index = self._read_index()
        return self._ssh_info(index, index["ssh"]["previous"])

    def ssh_rotation(self) -> dict[str, Any] | None:
        """The running rotation: ``{"from", "to", "started_at", "units": {serial: {"state", "detail", "at"}}}``."""
        return self._read_index()["ssh"]["rotation"]

    def ssh_private_keys(self) -> list[tuple[SshKeyInfo, PrivateKey]]:
        """Current key, then the previous one during a rotation (decrypted; empty if none).

        Raises
        ------
        SecretStoreError
            No protection, a wrong passphrase, or an entry missing from the backend.
        """
        if not self.index_path.exists():
            return []
        out = []
        with self._locked() as index:
            for role in ("current", "previous"):
                info = self._ssh_info(index, index["ssh"][role])
                if info is None:
                    continue
                key = self._get(index, f"ssh-{info.key_id}")
                if key is None:
                    raise SecretStoreError(f"the {role} SSH key {info.key_id} is listed in {self.index_path} but missing "
                                           f"from the {self.backend} store; import it again "
                                           "(speakerops keys import-ssh FILE --replace)")
                out.append((info, key))
        return out

    def _add_ssh(self, index: dict[str, Any], key: PrivateKey, source: str) -> SshKeyInfo:
        public = ssh_public_line(key)
        kid = ssh_key_id(public)
        public = f"{public} speakerops-{kid}"
        self._put(index, f"ssh-{kid}", key)
        index["ssh"]["keys"][kid] = {"public": public, "fingerprint": ssh_fingerprint(public),
                                     "created_at": self._clock().isoformat(), "source": source}
        return self._ssh_info(index, kid)  # type: ignore[return-value]

    def import_ssh(self, path: Path, password: str | None = None, *, replace: bool = False) -> SshKeyInfo:
        """Import an existing private key file as the current SSH client key.

        Raises
        ------
        SecretStoreError
            Unreadable key (see :func:`load_private_key_file`), no protection, a rotation running,
            or a current key already there without ``replace``.
        """
        key = load_private_key_file(path, password)
        with self._locked() as index:
            self._require_protection("import an SSH key")
            ssh = index["ssh"]
            if ssh["rotation"] is not None:
                raise SecretStoreError("an SSH key rotation is running: finish it first "
                                       "(speakerops keys rotate-ssh, then --finish)")
            if ssh["current"] is not None and not replace:
                raise SecretStoreError(f"the store already has SSH key {ssh['current']}; pass --replace to use "
                                       f"{path} instead (units that only accept the old key are then unreachable)")
            info = self._add_ssh(index, key, f"imported from {Path(path).resolve()}")
            old = ssh["current"]
            ssh["current"] = info.key_id
            if old and old != info.key_id:
                self._delete(f"ssh-{old}")
                del ssh["keys"][old]
        return info

    def create_ssh(self) -> SshKeyInfo:
        """Generate the first SSH client key (Ed25519). Raises SecretStoreError if one exists."""
        with self._locked() as index:
            self._require_protection("create an SSH key")
            if index["ssh"]["current"] is not None:
                raise SecretStoreError("the store already has an SSH key; rotate it (speakerops keys rotate-ssh)")
            info = self._add_ssh(index, ed25519.Ed25519PrivateKey.generate(), "generated")
            index["ssh"]["current"] = info.key_id
        return info

    def begin_ssh_rotation(self) -> SshKeyInfo:
        """Generate a new client key, make it current and keep the old one as previous until
        every unit switched. Returns the new key.

        Raises
        ------
        SecretStoreError
            No current key, a rotation already running, or no protection.
        """
        with self._locked() as index:
            self._require_protection("rotate the SSH key")
            ssh = index["ssh"]
            if ssh["current"] is None:
                raise SecretStoreError("the store has no SSH key to rotate: import the key the units accept "
                                       "(speakerops keys import-ssh FILE)")
            if ssh["rotation"] is not None:
                raise SecretStoreError("an SSH key rotation is already running")
            info = self._add_ssh(index, ed25519.Ed25519PrivateKey.generate(), "generated")
            ssh["rotation"] = {"from": ssh["current"], "to": info.key_id, "started_at": self._clock().isoformat(),
                               "units": {}}
            ssh["previous"], ssh["current"] = ssh["current"], info.key_id
        return info

    def record_ssh_unit(self, serial: str, switched: bool, detail: str) -> None:
        """Record one unit's outcome in the running rotation (no-op without one)."""
        with self._locked() as index:
            rotation = index["ssh"]["rotation"]
            if rotation is not None:
                rotation["units"][serial] = {"state": "switched" if switched else "failed", "detail": detail,
                                             "at": self._clock().isoformat()}

    def finish_ssh_rotation(self, serials: list[str]) -> str:
        """Delete the previous key once every unit in ``serials`` switched; returns its id.

        Raises
        ------
        SecretStoreError
            No rotation running, or units that have not switched (named).
        """
        with self._locked() as index:
            ssh = index["ssh"]
            rotation = ssh["rotation"]
            if rotation is None:
                raise SecretStoreError("no SSH key rotation is running")
            units = rotation["units"]
            pending = sorted(s for s in serials if units.get(s, {}).get("state") != "switched")
            if pending:
                raise SecretStoreError(f"{len(pending)} unit(s) still accept only the previous key: "
                                       f"{', '.join(pending[:20])}{' …' if len(pending) > 20 else ''}; run "
                                       "`speakerops keys rotate-ssh` again when they are reachable (the previous "
                                       "key is kept until then)")
            old = ssh["previous"]
            self._delete(f"ssh-{old}")
            ssh["keys"].pop(old, None)
            ssh["previous"], ssh["rotation"] = None, None
            rotation_done = {"from": old, "to": ssh["current"], "finished_at": self._clock().isoformat()}
            index.setdefault("history", []).append(rotation_done)
        return old

    def status(self) -> dict[str, Any]:
        """Backend, protection, signing keys and SSH keys with the rotation state (public data)."""
        index = self._read_index()
        return {"keys_dir": str(self.keys_dir), "backend": self.backend, "protection": self.protection,
                "signing": {"current": index["signing"]["current"],
                            "trusted": sorted(self.trusted_signing_keys()),
                            "keys": {k: {"created_at": v["created_at"]} for k, v in index["signing"]["keys"].items()}},
                "ssh": {"current": (c.as_dict() if (c := self._ssh_info(index, index["ssh"]["current"])) else None),
                        "previous": (p.as_dict() if (p := self._ssh_info(index, index["ssh"]["previous"])) else None),
                        "rotation": index["ssh"]["rotation"]}}
