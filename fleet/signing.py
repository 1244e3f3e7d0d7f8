"""Ed25519 signatures over model-bundle manifests, and the key store that holds the signing key.

What is signed: the manifest's *canonical bytes* — ``manifest.json`` parsed, any ``signature``
field removed, then ``json.dumps(sort_keys=True, separators=(",", ":"), ensure_ascii=False)``
encoded as UTF-8. The signature goes next to the manifest as ``manifest.sig``::

    {"algorithm": "ed25519", "key_id": "3f2a…(16 hex)", "manifest_sha256": "…",
     "signature": "<base64 of the 64-byte Ed25519 signature>"}

``key_id`` is the first 16 hex digits of the SHA-256 of the raw 32-byte public key. Units trust
the public keys in ``<install root>/etc/trusted-keys/<key_id>.pub`` (PEM, SubjectPublicKeyInfo);
their ``bin/verify-bundle`` (``fleet.simulator.sshd``) recomputes the same canonical bytes.

Key storage (:class:`KeyStore`, over :class:`fleet.keys.SecretStore`): the OS keyring when
``keyring`` has a usable backend, else ``<data_dir>/keys/registry.pem`` (0600) sealed with the
passphrase in ``SPEAKEROPS_KEY_PASSPHRASE``; with neither, creating or reading the key is refused
unless the lab opt-in ``SPEAKEROPS_KEYS_UNENCRYPTED_LAB=1`` is set. ``speakerops keys
rotate-signing`` makes a new key current; earlier keys stay trusted (their public keys are kept in
the store's index and pushed to units, :func:`fleet.keys.SecretStore.trusted_signing_keys`).
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from fleet.errors import SignatureError
from fleet.keys import PASSPHRASE_ENV, SIGNING_ENTRY, SecretStore, usable_keyring

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
SIGNATURE_FILE = "manifest.sig"
#: Directory of trusted public keys, relative to a unit's install root.
TRUSTED_KEYS_DIR = "etc/trusted-keys"


def canonical_manifest_bytes(manifest: dict[str, Any]) -> bytes:
    """The bytes a signature covers: the manifest without ``signature``, canonical JSON, UTF-8."""
    body = {k: v for k, v in manifest.items() if k != "signature"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def key_id_of(public_key: Ed25519PublicKey) -> str:
    """First 16 hex digits of the SHA-256 of the raw 32-byte public key."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def public_key_pem(public_key: Ed25519PublicKey) -> bytes:
    """PEM (SubjectPublicKeyInfo) of a public key: the format of ``etc/trusted-keys/*.pub``."""
    return public_key.public_bytes(serialization.Encoding.PEM,
                                   serialization.PublicFormat.SubjectPublicKeyInfo)


def load_public_key(pem: bytes) -> Ed25519PublicKey:
    """Parse a PEM public key.

    Raises
    ------
    SignatureError
        If it is not an Ed25519 public key.
    """
    try:
        key = serialization.load_pem_public_key(pem)
    except ValueError as exc:
        raise SignatureError(f"not a PEM public key ({exc})") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise SignatureError("the public key is not Ed25519")
    return key


@dataclass(frozen=True)
class BundleSignature:
    """A manifest's signature as written to ``manifest.sig``."""

    key_id: str
    signature_b64: str
    manifest_sha256: str

    def to_json(self) -> dict[str, str]:
        return {"algorithm": "ed25519", "key_id": self.key_id,
                "manifest_sha256": self.manifest_sha256, "signature": self.signature_b64}


class Signer:
    """Signs manifests with one Ed25519 private key.

    Parameters
    ----------
    private_key
        The signing key (from :class:`KeyStore`, or generated in tests).
    """

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self._key = private_key
        self.public_key = private_key.public_key()
        self.key_id = key_id_of(self.public_key)

    @classmethod
    def generate(cls) -> Signer:
        """A signer with a fresh key (tests, or a throw-away lab registry)."""
        return cls(Ed25519PrivateKey.generate())

    @property
    def public_pem(self) -> bytes:
        return public_key_pem(self.public_key)

    def sign_manifest(self, manifest: dict[str, Any]) -> BundleSignature:
        """Sign the canonical bytes of ``manifest``."""
        data = canonical_manifest_bytes(manifest)
        return BundleSignature(self.key_id, base64.b64encode(self._key.sign(data)).decode("ascii"),
                               hashlib.sha256(data).hexdigest())

    def sign_bundle(self, bundle_dir: Path) -> BundleSignature:
        """Sign ``<bundle_dir>/manifest.json`` and write ``manifest.sig`` beside it.

        Raises
        ------
        SignatureError
            If the manifest cannot be read as JSON.
        """
        sig = self.sign_manifest(read_manifest(bundle_dir))
        (Path(bundle_dir) / SIGNATURE_FILE).write_text(json.dumps(sig.to_json(), indent=2) + "\n",
                                                       encoding="utf-8")
        return sig

    def trust_on(self, install_root: Path) -> Path:
        """Write this key into a local install root's trusted keys (simulated units, tests)."""
        target = Path(install_root) / TRUSTED_KEYS_DIR / f"{self.key_id}.pub"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(self.public_pem)
        return target


def read_manifest(bundle_dir: Path) -> dict[str, Any]:
    path = Path(bundle_dir) / MANIFEST
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SignatureError(f"cannot read {path} ({exc})") from exc
    if not isinstance(data, dict):
        raise SignatureError(f"{path} is not a JSON object")
    return data


def read_signature(bundle_dir: Path) -> BundleSignature:
    """Parse ``manifest.sig``.

    Raises
    ------
    SignatureError
        If it is missing (an unsigned bundle) or malformed.
    """
    path = Path(bundle_dir) / SIGNATURE_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return BundleSignature(str(data["key_id"]), str(data["signature"]), str(data.get("manifest_sha256", "")))
    except FileNotFoundError as exc:
        raise SignatureError(f"{bundle_dir} is not signed ({SIGNATURE_FILE} missing); import it "
                             "into the registry (`speakerops models import`) to sign it") from exc
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SignatureError(f"{path} is malformed ({exc})") from exc


def verify_bundle_signature(bundle_dir: Path, trusted: dict[str, Ed25519PublicKey]) -> str:
    """Check ``manifest.sig`` against the manifest and the trusted keys; return the key id.

    Raises
    ------
    SignatureError
        Unsigned, unknown key id, or a signature that does not match the manifest.
    """
    sig = read_signature(bundle_dir)
    key = trusted.get(sig.key_id)
    if key is None:
        raise SignatureError(f"{bundle_dir} is signed by key {sig.key_id}, which is not trusted")
    try:
        key.verify(base64.b64decode(sig.signature_b64, validate=True),
                   canonical_manifest_bytes(read_manifest(bundle_dir)))
    except (InvalidSignature, ValueError) as exc:
        raise SignatureError(f"the signature of {bundle_dir} does not match its manifest "
                             "(altered after signing)") from exc
    return sig.key_id


class KeyStore(SecretStore):
    """The registry's view of the secret store (:class:`fleet.keys.SecretStore`): the signing key.

    Parameters
    ----------
    data_dir
        SpeakerOps data directory; the store is ``<data_dir>/keys/``.
    use_keyring
        Allow the OS keyring for a new store (default); tests pass False.
    """

    def signer(self, name: str = SIGNING_ENTRY) -> Signer:
        """The signer of the current signing key (``name`` other than ``registry``: a separate,
        unrotated key), created on first use.

        Raises
        ------
        SignatureError
            (:class:`fleet.keys.SecretStoreError`) no keyring, no ``SPEAKEROPS_KEY_PASSPHRASE`` and
            no lab opt-in; a wrong passphrase; a stored key that is not Ed25519.
        """
        return Signer(self.signing_key(name))


_usable_keyring = usable_keyring  # the name the first KeyStore used
__all__ = ["PASSPHRASE_ENV", "KeyStore", "Signer", "key_id_of", "public_key_pem", "load_public_key",
           "verify_bundle_signature", "read_signature", "read_manifest", "canonical_manifest_bytes",
           "BundleSignature"]
