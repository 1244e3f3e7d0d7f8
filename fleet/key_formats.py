"""Key formats of the secret store (:mod:`fleet.keys`): the passphrase envelope and SSH key helpers.

The envelope (:func:`seal`/:func:`unseal`): scrypt (n = 2**15, r = 8, p = 1 — RFC 7914 section 2's
figures for interactive use; ~0.1 s and 32 MiB here) derives a 256-bit key from the passphrase and
a random 16-byte salt; AES-256-GCM encrypts the secret with a random 12-byte nonce and the entry's
name as associated data. Armoured as ``-----BEGIN SPEAKEROPS ENCRYPTED KEY-----`` + JSON (format,
kdf parameters, salt, nonce, ciphertext, all base64) + ``-----END …``.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from fleet.errors import SignatureError

PASSPHRASE_ENV = "SPEAKEROPS_KEY_PASSPHRASE"
ENVELOPE_BEGIN = b"-----BEGIN SPEAKEROPS ENCRYPTED KEY-----"
ENVELOPE_END = b"-----END SPEAKEROPS ENCRYPTED KEY-----"
#: scrypt cost: RFC 7914 section 2 ("interactive logins": N = 2**14 … 2**15, r = 8, p = 1).
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**15, 8, 1

PrivateKey = ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


class SecretStoreError(SignatureError):
    """The key store cannot create, open or change a key; the message says what to set or run."""




# -- encryption envelope --------------------------------------------------------------------------
def _kdf(passphrase: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return Scrypt(salt=salt, length=32, n=n, r=r, p=p).derive(passphrase.encode("utf-8"))


def seal(secret: bytes, passphrase: str, name: str) -> bytes:
    """Encrypt ``secret`` under ``passphrase`` (scrypt → AES-256-GCM, ``name`` as associated data)."""
    salt, nonce = os.urandom(16), os.urandom(12)
    key = _kdf(passphrase, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P)
    body = {"format": "speakerops-key/1", "name": name, "kdf": "scrypt", "n": SCRYPT_N, "r": SCRYPT_R,
            "p": SCRYPT_P, "salt": base64.b64encode(salt).decode(), "cipher": "aes-256-gcm",
            "nonce": base64.b64encode(nonce).decode(),
            "ciphertext": base64.b64encode(AESGCM(key).encrypt(nonce, secret, name.encode())).decode()}
    return ENVELOPE_BEGIN + b"\n" + json.dumps(body, indent=1).encode() + b"\n" + ENVELOPE_END + b"\n"


def unseal(data: bytes, passphrase: str, name: str, where: str) -> bytes:
    """Decrypt :func:`seal`'s output.

    Raises
    ------
    SecretStoreError
        Malformed, sealed for another entry, or a wrong passphrase.
    """
    try:
        body = json.loads(data.strip()[len(ENVELOPE_BEGIN):-len(ENVELOPE_END)])
        salt, nonce = base64.b64decode(body["salt"]), base64.b64decode(body["nonce"])
        ciphertext = base64.b64decode(body["ciphertext"])
        key = _kdf(passphrase, salt, int(body["n"]), int(body["r"]), int(body["p"]))
    except (ValueError, KeyError, TypeError) as exc:
        raise SecretStoreError(f"{where} is not a readable SpeakerOps key file ({exc})") from exc
    try:
        return AESGCM(key).decrypt(nonce, ciphertext, name.encode())
    except InvalidTag as exc:
        raise SecretStoreError(f"cannot decrypt {where}: wrong passphrase in {PASSPHRASE_ENV} (or the file "
                               "was altered); set it to the passphrase the key store was created with") from exc


# -- SSH key helpers ------------------------------------------------------------------------------
def ssh_public_line(key: PrivateKey, comment: str = "") -> str:
    """The ``authorized_keys`` line of a key: ``"ssh-ed25519 AAAA… comment"``."""
    line = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                         serialization.PublicFormat.OpenSSH).decode()
    return f"{line} {comment}".strip()


def ssh_fingerprint(public_line: str) -> str:
    """OpenSSH SHA256 fingerprint (``SHA256:…``, as ``ssh-keygen -l``) of a public key line."""
    blob = base64.b64decode(public_line.split()[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def ssh_key_id(public_line: str) -> str:
    """First 16 hex digits of the SHA-256 of the public key blob (the store's entry id)."""
    return hashlib.sha256(base64.b64decode(public_line.split()[1])).hexdigest()[:16]


def to_paramiko(key: PrivateKey) -> Any:
    """A paramiko ``PKey`` (Ed25519Key, RSAKey or ECDSAKey) of a private key, built in memory.

    Raises
    ------
    SecretStoreError
        A key type paramiko cannot use.
    """
    import paramiko

    classes = ((ed25519.Ed25519PrivateKey, paramiko.Ed25519Key), (rsa.RSAPrivateKey, paramiko.RSAKey),
               (ec.EllipticCurvePrivateKey, paramiko.ECDSAKey))
    cls = next((c for t, c in classes if isinstance(key, t)), None)
    if cls is None:
        raise SecretStoreError(f"SSH keys of type {type(key).__name__} are not supported; use Ed25519, RSA or ECDSA")
    text = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                             serialization.NoEncryption()).decode()
    return cls.from_private_key(io.StringIO(text))


def load_private_key_file(path: Path, password: str | None = None) -> PrivateKey:
    """Read an OpenSSH or PEM private key file (optionally protected by its own passphrase).

    Raises
    ------
    SecretStoreError
        Unreadable, not a private key, a passphrase needed or wrong, or an unsupported type.
    """
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise SecretStoreError(f"cannot read the key file {path} ({exc})") from exc
    pw = password.encode() if password else None
    try:
        try:
            key: Any = serialization.load_ssh_private_key(data, pw)
        except ValueError as exc:
            if b"OPENSSH PRIVATE KEY" in data:
                raise ValueError(f"wrong passphrase or damaged key ({exc})") from exc
            key = serialization.load_pem_private_key(data, pw)
    except TypeError as exc:
        raise SecretStoreError(f"{path} is protected by a passphrase: give it on standard input "
                               "(--passphrase-stdin)") from exc
    except ValueError as exc:
        raise SecretStoreError(f"{path} is not a usable private key ({exc})") from exc
    if not isinstance(key, ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        raise SecretStoreError(f"{path} holds a {type(key).__name__}; SSH keys must be Ed25519, RSA or ECDSA")
    return key
