"""The one seam for personal-data protection: SM4 field encryption and SM3 blind indexes.

- Fields are SM4-CBC encrypted (random IV, PKCS7) into text "<key_version>:<base64(iv+ct)>",
  so keys can rotate: old versions stay loaded for decryption, one version is active.
- Searchable fields (ID number, phone) are also stored as a keyed SM3 HMAC ("blind index"):
  equality lookups work, the value itself cannot be read back or brute-forced without the key.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import os
import re
import tempfile
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, overload

from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

log = logging.getLogger(__name__)

DEFAULT_KEY_FILE = Path("var/keys.json")
SM4_KEY_BYTES = 16
INDEX_KEY_BYTES = 32
AUDIT_KEY_BYTES = 32
_BLOCK = 16
_PURPOSE_RE = re.compile(r"^[a-z][a-z0-9_]*$")


class KeyConfigError(Exception):
    """Key material is missing or malformed (configuration error: refuse to start)."""


class DecryptionError(Exception):
    """A stored value cannot be decrypted (unknown key version, corrupt or tampered text)."""


# --- SM3 ---------------------------------------------------------------------------------------
# hashlib's sm3 comes from the system OpenSSL; a build without it falls back to gmssl (slow, but
# the stored hashes are identical, so a machine move never breaks lookups or the audit chain).
_HAS_OPENSSL_SM3 = "sm3" in hashlib.algorithms_available


def _gmssl_sm3(data: bytes) -> bytes:
    from gmssl import func, sm3

    return bytes.fromhex(sm3.sm3_hash(func.bytes_to_list(data)))


def sm3_hex(data: bytes) -> str:
    if _HAS_OPENSSL_SM3:
        return hashlib.new("sm3", data).hexdigest()
    return _gmssl_sm3(data).hex()


def hmac_sm3_hex(key: bytes, message: bytes) -> str:
    if _HAS_OPENSSL_SM3:
        return hmac.new(key, message, "sm3").hexdigest()
    # RFC 2104 by hand; SM3's block size is 64 bytes.
    if len(key) > 64:
        key = _gmssl_sm3(key)
    key = key.ljust(64, b"\0")
    inner = _gmssl_sm3(bytes(b ^ 0x36 for b in key) + message)
    return _gmssl_sm3(bytes(b ^ 0x5C for b in key) + inner).hex()


# --- Normalisation -----------------------------------------------------------------------------
def normalise(value: str, purpose: str) -> str:
    """Canonical form before hashing, so '138 0013 8000', '+8613800138000' and full-width
    digits typed on a phone keyboard all find the same resident."""
    text = unicodedata.normalize("NFKC", value)
    text = re.sub(r"\s+", "", text)
    if purpose == "phone":
        text = re.sub(r"[-()]", "", text)
        text = re.sub(r"^(?:\+|00)?86(?=1\d{10}$)", "", text)
    elif purpose == "id_number":
        text = text.upper()
    return text


# --- Keys --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class KeyRing:
    sm4_keys: Mapping[int, bytes]  # version -> 16-byte key; old versions kept for decryption
    active_version: int
    index_key: bytes
    # True when keys were generated into a local file: fine for one machine, not for production.
    is_development: bool = False
    source: str = field(default="env", compare=False)
    # HMAC-SM3 keys of the audit chain (version -> key); every entry records the version it was
    # linked with, so old versions stay loaded to verify old entries. See audit_key_versions().
    audit_keys: Mapping[int, bytes] = field(default_factory=dict)
    audit_active_version: int = 0  # 0: the highest loaded version

    def __post_init__(self) -> None:
        if self.active_version not in self.sm4_keys:
            raise KeyConfigError(f"active SM4 key version {self.active_version} is not loaded")
        for version, key in self.sm4_keys.items():
            if len(key) != SM4_KEY_BYTES or version < 0:
                raise KeyConfigError(f"SM4 key version {version} must be 16 bytes")
        if len(self.index_key) < 16:
            raise KeyConfigError("INDEX_KEY must be at least 16 bytes")
        for version, key in self.audit_keys.items():
            if len(key) < 16 or version < 1:
                raise KeyConfigError(f"audit key version {version} must be at least 16 bytes, version ≥ 1")
        if self.audit_active_version and self.audit_active_version not in self.audit_key_versions()[0]:
            raise KeyConfigError(f"active audit key version {self.audit_active_version} is not loaded")

    def audit_key_versions(self) -> tuple[dict[int, bytes], int]:
        """(version -> key, active version) for the audit chain.

        Version 1 defaults to a key derived from INDEX_KEY, so a deployment that predates audit
        keys links its chain with a secret (as secret as INDEX_KEY) without a configuration
        change; AUDIT_KEYS / the key file's "audit_keys" override it and add versions."""
        keys = {1: bytes.fromhex(hmac_sm3_hex(self.index_key, b"audit-chain-key\0v1")), **self.audit_keys}
        return keys, self.audit_active_version or max(keys)


def _parse_hex(value: str, what: str) -> bytes:
    try:
        return bytes.fromhex(value.strip())
    except ValueError:
        raise KeyConfigError(f"{what} is not hex") from None


def _parse_sm4_keys(spec: str) -> dict[int, bytes]:
    keys = _parse_versioned(spec, "SM4_KEYS", "SM4 key", "32 hex")
    if not keys:
        raise KeyConfigError("SM4_KEYS is empty")
    return keys


def _parse_versioned(spec: str, name: str, what: str, example: str) -> dict[int, bytes]:
    keys: dict[int, bytes] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        version, sep, hex_key = part.partition(":")
        if not sep or not version.strip().isdigit():
            raise KeyConfigError(f"{name} must look like '1:<{example}>,2:<{example}>'")
        keys[int(version)] = _parse_hex(hex_key, f"{what} {version}")
    return keys


def _version_number(value: str, name: str) -> int:
    value = value.strip()
    if value and not value.isdigit():
        raise KeyConfigError(f"{name} must be a version number")
    return int(value) if value else 0


def _with_audit_env(ring: KeyRing, env: Mapping[str, str]) -> KeyRing:
    """AUDIT_KEYS / AUDIT_ACTIVE_KEY from the environment win over the key file's audit keys."""
    spec, active = env.get("AUDIT_KEYS", ""), env.get("AUDIT_ACTIVE_KEY", "")
    if not spec and not active:
        return ring
    keys = _parse_versioned(spec, "AUDIT_KEYS", "audit key", "64 hex") if spec else dict(ring.audit_keys)
    return replace(ring, audit_keys=keys, audit_active_version=_version_number(active, "AUDIT_ACTIVE_KEY"))


def _keyring_from_env(env: Mapping[str, str]) -> KeyRing:
    if not env.get("SM4_KEYS") or not env.get("INDEX_KEY"):
        # Half a configuration is a deployment mistake: silently generating a key file instead
        # would write data that the real keys can never read.
        raise KeyConfigError("set both SM4_KEYS and INDEX_KEY (or neither, to use the local key file)")
    keys = _parse_sm4_keys(env["SM4_KEYS"])
    active = env.get("SM4_ACTIVE_KEY", "").strip()
    if active and not active.isdigit():
        raise KeyConfigError("SM4_ACTIVE_KEY must be a version number")
    return KeyRing(
        sm4_keys=keys,
        active_version=int(active) if active else max(keys),
        index_key=_parse_hex(env["INDEX_KEY"], "INDEX_KEY"),
        is_development=False,
        source="env",
    )


def _new_key_file_content() -> str:
    return json.dumps(
        {
            "comment": "Generated on first start for a single-machine install. Back it up: "
            "without it the encrypted data cannot be read. Never commit it.",
            "sm4_keys": {"1": os.urandom(SM4_KEY_BYTES).hex()},
            "active": 1,
            "index_key": os.urandom(INDEX_KEY_BYTES).hex(),
            "audit_keys": {"1": os.urandom(AUDIT_KEY_BYTES).hex()},
            "audit_active": 1,
        },
        indent=2,
    )


def _ensure_key_file(path: Path) -> None:
    """Creates the key file atomically with mode 0600; a concurrent first start keeps one file."""
    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".keys-", suffix=".tmp")  # mode 0600
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(_new_key_file_content())
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(tmp, path)  # fails if another process won the race: keep theirs
        except FileExistsError:
            pass
    finally:
        os.unlink(tmp)


def _keyring_from_file(path: Path) -> KeyRing:
    _ensure_key_file(path)
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        log.warning("key file %s is readable by other users (mode %o); chmod 600 it", path, mode)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        keys = {int(v): _parse_hex(k, f"SM4 key {v}") for v, k in data["sm4_keys"].items()}
        return KeyRing(
            sm4_keys=keys,
            active_version=int(data.get("active", max(keys))),
            index_key=_parse_hex(data["index_key"], "index_key"),
            is_development=True,
            source=str(path),
            # Files written before audit keys existed have none: version 1 is then derived.
            audit_keys={int(v): _parse_hex(k, f"audit key {v}") for v, k in (data.get("audit_keys") or {}).items()},
            audit_active_version=int(data.get("audit_active") or 0),
        )
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise KeyConfigError(f"key file {path} is malformed: {exc}") from None


def load_keys(env: Mapping[str, str], key_file: Path = DEFAULT_KEY_FILE) -> KeyRing:
    """Keys from env (SM4_KEYS, SM4_ACTIVE_KEY, INDEX_KEY), else from the local key file."""
    if any(env.get(name) for name in ("SM4_KEYS", "SM4_ACTIVE_KEY", "INDEX_KEY")):
        return _with_audit_env(_keyring_from_env(env), env)
    return _with_audit_env(_keyring_from_file(key_file), env)


# --- Cipher ------------------------------------------------------------------------------------
class FieldCipher:
    def __init__(self, keys: KeyRing) -> None:
        self.keys = keys

    @classmethod
    def from_env(
        cls, env: Mapping[str, str] | None = None, key_file: Path = DEFAULT_KEY_FILE
    ) -> FieldCipher:
        return cls(load_keys(os.environ if env is None else env, key_file))

    def _cipher(self, version: int, iv: bytes) -> Cipher[modes.CBC]:
        try:
            key = self.keys.sm4_keys[version]
        except KeyError:
            raise DecryptionError(f"SM4 key version {version} is not loaded") from None
        return Cipher(algorithms.SM4(key), modes.CBC(iv))

    @overload
    def encrypt(self, plaintext: str) -> str: ...
    @overload
    def encrypt(self, plaintext: None) -> None: ...
    def encrypt(self, plaintext: str | None) -> str | None:
        if plaintext is None:
            return None
        version = self.keys.active_version
        iv = os.urandom(_BLOCK)
        padder = padding.PKCS7(128).padder()
        data = padder.update(plaintext.encode("utf-8")) + padder.finalize()
        enc = self._cipher(version, iv).encryptor()
        blob = iv + enc.update(data) + enc.finalize()
        return f"{version}:{base64.b64encode(blob).decode('ascii')}"

    @overload
    def decrypt(self, token: str) -> str: ...
    @overload
    def decrypt(self, token: None) -> None: ...
    def decrypt(self, token: str | None) -> str | None:
        if token is None:
            return None
        version, iv, body = self._split(token)
        dec = self._cipher(version, iv).decryptor()
        unpadder = padding.PKCS7(128).unpadder()
        try:
            data = unpadder.update(dec.update(body) + dec.finalize()) + unpadder.finalize()
            return data.decode("utf-8")
        except ValueError:  # bad padding or not UTF-8: wrong key or altered text
            raise DecryptionError("stored value cannot be decrypted") from None

    @staticmethod
    def _split(token: str) -> tuple[int, bytes, bytes]:
        version, sep, b64 = token.partition(":")
        if not sep or not version.isdigit():
            raise DecryptionError("not an encrypted value")
        try:
            blob = base64.b64decode(b64, validate=True)
        except (binascii.Error, ValueError):
            raise DecryptionError("stored value is not base64") from None
        if len(blob) < 2 * _BLOCK or len(blob) % _BLOCK:
            raise DecryptionError("stored value has a wrong length")
        return int(version), blob[:_BLOCK], blob[_BLOCK:]

    def encrypt_json(self, obj: Any) -> str:
        text = json.dumps(obj, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
        return self.encrypt(text)

    def decrypt_json(self, token: str | None) -> Any:
        if token is None:
            return None
        return json.loads(self.decrypt(token))

    def key_version(self, token: str) -> int:
        return self._split(token)[0]

    def reencrypt(self, token: str) -> str:
        """For key rotation jobs: returns the token under the active key (unchanged if it is)."""
        if self.key_version(token) == self.keys.active_version:
            return token
        return self.encrypt(self.decrypt(token))

    @overload
    def blind_index(self, value: str, purpose: str) -> str: ...
    @overload
    def blind_index(self, value: None, purpose: str) -> None: ...
    def blind_index(self, value: str | None, purpose: str) -> str | None:
        """Keyed SM3 of the normalised value. The purpose separates domains, so the same digits
        as a phone and as a sender id give unrelated hashes."""
        if value is None:
            return None
        if not _PURPOSE_RE.match(purpose):
            raise ValueError(f"bad blind-index purpose {purpose!r}")
        message = purpose.encode("ascii") + b"\0" + normalise(value, purpose).encode("utf-8")
        return hmac_sm3_hex(self.keys.index_key, message)
