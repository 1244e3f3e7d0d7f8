"""The secret store (fleet.keys): never plain text without the lab opt-in, encrypted files that hold
no private key, clear errors for a missing or wrong passphrase, imports, rotation state, a keyring."""

from __future__ import annotations

import logging
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from fleet.keys import LAB_ENV, PASSPHRASE_ENV, SecretStore, SecretStoreError, to_paramiko
from fleet.signing import KeyStore


@pytest.fixture
def encrypted(monkeypatch):
    """No lab opt-in, a passphrase: the production setting without a keyring."""
    monkeypatch.delenv(LAB_ENV, raising=False)
    monkeypatch.setenv(PASSPHRASE_ENV, "correct horse battery staple")


def files_of(store: SecretStore) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in store.keys_dir.iterdir() if p.is_file()}


def raw_private(key) -> bytes:
    return key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                             serialization.NoEncryption())


def test_no_keyring_no_passphrase_no_opt_in_refuses_to_create_or_read(tmp_path, monkeypatch):
    monkeypatch.delenv(LAB_ENV, raising=False)
    monkeypatch.delenv(PASSPHRASE_ENV, raising=False)
    store = KeyStore(tmp_path, use_keyring=False)
    with pytest.raises(SecretStoreError) as err:
        store.signer()
    assert PASSPHRASE_ENV in str(err.value) and LAB_ENV in str(err.value) and "keyring" in str(err.value)
    with pytest.raises(SecretStoreError, match=PASSPHRASE_ENV):
        store.create_ssh()
    assert not any(p.suffix == ".pem" for p in store.keys_dir.glob("*"))
    # a plain key written in a lab is not read once the opt-in is gone
    monkeypatch.setenv(LAB_ENV, "1")
    KeyStore(tmp_path / "lab", use_keyring=False).signer()
    monkeypatch.delenv(LAB_ENV)
    with pytest.raises(SecretStoreError, match="stored unencrypted"):
        KeyStore(tmp_path / "lab", use_keyring=False).signer()


def test_encrypted_files_hold_no_private_key_and_reopen(tmp_path, encrypted):
    store = KeyStore(tmp_path, use_keyring=False)
    signer = store.signer()
    ssh = store.create_ssh()
    [(_, ssh_key)] = store.ssh_private_keys()
    files = files_of(store)
    assert set(files) == {"index.json", "registry.pem", f"ssh-{ssh.key_id}.pem", ".lock"}
    for name, data in files.items():
        assert b"PRIVATE KEY" not in data, name
        assert raw_private(signer._key) not in data and raw_private(ssh_key) not in data
        assert b"SPEAKEROPS ENCRYPTED KEY" in data or not name.endswith(".pem")
    for p in store.keys_dir.glob("*.pem"):
        assert p.stat().st_mode & 0o777 == 0o600
    assert store.keys_dir.stat().st_mode & 0o777 == 0o700
    again = KeyStore(tmp_path, use_keyring=False)
    assert again.signer().key_id == signer.key_id
    [(info, key)] = again.ssh_private_keys()
    assert info.key_id == ssh.key_id and raw_private(key) == raw_private(ssh_key)
    assert to_paramiko(key).get_base64() == ssh.public.split()[1]
    assert again.status()["protection"] == "passphrase" and again.backend == "file"


def test_wrong_or_missing_passphrase_is_a_clear_error(tmp_path, encrypted, monkeypatch):
    store = KeyStore(tmp_path, use_keyring=False)
    store.signer()
    store.create_ssh()
    monkeypatch.setenv(PASSPHRASE_ENV, "wrong")
    with pytest.raises(SecretStoreError, match=f"wrong passphrase in {PASSPHRASE_ENV}"):
        KeyStore(tmp_path, use_keyring=False).signer()
    with pytest.raises(SecretStoreError, match="wrong passphrase"):
        KeyStore(tmp_path, use_keyring=False).ssh_private_keys()
    with pytest.raises(SecretStoreError, match="wrong passphrase"):  # nothing new under another passphrase
        KeyStore(tmp_path, use_keyring=False).rotate_signing()
    monkeypatch.delenv(PASSPHRASE_ENV)
    monkeypatch.setenv(LAB_ENV, "1")  # the lab opt-in does not open an encrypted key
    with pytest.raises(SecretStoreError, match=f"encrypted: set {PASSPHRASE_ENV}"):
        KeyStore(tmp_path, use_keyring=False).signer()
    # public data needs no passphrase
    assert len(KeyStore(tmp_path, use_keyring=False).trusted_signing_keys()) == 1


def test_lab_opt_in_writes_plain_files_with_a_warning_then_a_passphrase_encrypts_them(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv(LAB_ENV, "1")
    monkeypatch.delenv(PASSPHRASE_ENV, raising=False)
    with caplog.at_level(logging.WARNING, logger="fleet.keys"):
        key_id = KeyStore(tmp_path, use_keyring=False).signer().key_id
    assert LAB_ENV in caplog.text and "unencrypted" in caplog.text
    pem = tmp_path / "keys" / "registry.pem"
    assert pem.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    monkeypatch.setenv(PASSPHRASE_ENV, "now protected")
    assert KeyStore(tmp_path, use_keyring=False).signer().key_id == key_id
    assert b"PRIVATE KEY" not in pem.read_bytes() and b"SPEAKEROPS ENCRYPTED KEY" in pem.read_bytes()


def test_import_ssh_key_with_its_own_passphrase(tmp_path, encrypted):
    own = tmp_path / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "its own", "-f", str(own)], check=True)
    store = SecretStore(tmp_path / "data", use_keyring=False)
    with pytest.raises(SecretStoreError, match="--passphrase-stdin"):
        store.import_ssh(own)
    with pytest.raises(SecretStoreError, match="not a usable private key"):
        store.import_ssh(own, "wrong")
    with pytest.raises(SecretStoreError, match="cannot read"):
        store.import_ssh(tmp_path / "missing")
    info = store.import_ssh(own, "its own")
    assert info.public.split()[:2] == own.with_suffix(".pub").read_text().split()[:2]
    assert info.fingerprint in subprocess.run(["ssh-keygen", "-l", "-f", str(own.with_suffix(".pub"))],
                                              capture_output=True, text=True, check=True).stdout
    with pytest.raises(SecretStoreError, match="--replace"):
        store.import_ssh(own, "its own")
    assert all(b"PRIVATE KEY" not in d for d in files_of(store).values())


def test_signing_rotation_keeps_old_key_trusted(tmp_path, encrypted):
    store = KeyStore(tmp_path, use_keyring=False)
    first = store.signer()
    old, new = store.rotate_signing()
    assert old == first.key_id and new != old
    assert KeyStore(tmp_path, use_keyring=False).signer().key_id == new
    assert set(store.trusted_signing_keys()) == {old, new}
    status = store.status()["signing"]
    assert status["current"] == new and status["trusted"] == sorted([old, new])
    # a store whose first key is made by rotate-signing
    assert KeyStore(tmp_path / "other", use_keyring=False).rotate_signing()[0] is None


def test_ssh_rotation_state_and_finish_refused_until_all_switched(tmp_path, encrypted, clock):
    store = SecretStore(tmp_path, use_keyring=False, clock=clock)
    with pytest.raises(SecretStoreError, match="import-ssh"):
        store.begin_ssh_rotation()
    first = store.create_ssh()
    new = store.begin_ssh_rotation()
    with pytest.raises(SecretStoreError, match="already running"):
        store.begin_ssh_rotation()
    assert [i.key_id for i, _ in store.ssh_private_keys()] == [new.key_id, first.key_id]
    store.record_ssh_unit("A", True, "switched")
    store.record_ssh_unit("B", False, "unreachable")
    with pytest.raises(SecretStoreError, match=r"1 unit\(s\) still accept only the previous key: B"):
        store.finish_ssh_rotation(["A", "B"])
    assert store.ssh_previous().key_id == first.key_id
    store.record_ssh_unit("B", True, "switched")
    assert store.finish_ssh_rotation(["A", "B"]) == first.key_id
    assert [i.key_id for i, _ in store.ssh_private_keys()] == [new.key_id]
    assert not (store.keys_dir / f"ssh-{first.key_id}.pem").exists()
    assert store.ssh_rotation() is None


def test_keyring_backend_keeps_keys_out_of_files(tmp_path, monkeypatch):
    """The OS keyring cannot run here (no Secret Service): an in-memory ``keyring`` backend stands in."""
    keyring = pytest.importorskip("keyring")
    from keyring.backend import KeyringBackend

    previous = keyring.get_keyring()  # before the class below registers itself as a candidate backend

    class MemoryKeyring(KeyringBackend):
        priority = 10

        def __init__(self) -> None:
            super().__init__()
            self.items: dict[tuple[str, str], str] = {}

        def get_password(self, service, username):
            return self.items.get((service, username))

        def set_password(self, service, username, password):
            self.items[(service, username)] = password

        def delete_password(self, service, username):
            self.items.pop((service, username), None)

    ring = MemoryKeyring()
    keyring.set_keyring(ring)
    try:
        monkeypatch.delenv(LAB_ENV, raising=False)
        monkeypatch.delenv(PASSPHRASE_ENV, raising=False)
        store = KeyStore(tmp_path)
        signer = store.signer()
        ssh = store.create_ssh()
        assert store.backend == "keyring" and store.protection == "keyring"
        assert {u for _, u in ring.items} == {"signing-key:registry", f"ssh-key:{ssh.key_id}"}
        assert not list(store.keys_dir.glob("*.pem"))
        assert KeyStore(tmp_path).signer().key_id == signer.key_id
    finally:
        keyring.set_keyring(previous)
    # the store remembers its backend: without a keyring it says so instead of making files
    with pytest.raises(SecretStoreError, match="OS keyring, which is not usable"):
        KeyStore(tmp_path).signer()


def test_import_ssh_from_path_object(tmp_path, encrypted):
    key = tmp_path / "k"
    subprocess.run(["ssh-keygen", "-q", "-t", "rsa", "-b", "2048", "-m", "PEM", "-N", "", "-f", str(key)], check=True)
    info = SecretStore(tmp_path / "d", use_keyring=False).import_ssh(Path(key))
    assert info.public.startswith("ssh-rsa ")
