"""SM4 / SM3 in backend.infra.crypto against the GM/T standard vectors and the gmssl reference."""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
import stat
import threading
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from gmssl import func, sm3, sm4
from hypothesis import given, settings
from hypothesis import strategies as st

from backend.infra import crypto
from backend.infra.crypto import DecryptionError, FieldCipher, KeyConfigError, KeyRing, load_keys

STD_KEY = bytes.fromhex("0123456789abcdeffedcba9876543210")
STD_CT = bytes.fromhex("681edf34d206965e86b3e94f536e4246")
SM3_ABC = "66c7f0f462eeedd9d1f2d46bdc10e4e24167c4875cf2f7a2297da02b8f4ba8e0"
SM3_ABCD16 = "debe9ff92275b8a138604889c18e5a4d6fdb70e5387e5765293dcba39c0c5732"

KEY1, KEY2 = bytes(range(16)), bytes(range(16, 32))
INDEX_KEY = bytes.fromhex("aa" * 32)


@pytest.fixture
def cipher() -> FieldCipher:
    return FieldCipher(KeyRing({1: KEY1}, 1, INDEX_KEY))


def _gmssl(key: bytes, mode: int) -> sm4.CryptSM4:
    c = sm4.CryptSM4()
    c.set_key(key, mode)
    return c


def _gmssl_hmac_sm3(key: bytes, msg: bytes) -> str:
    """HMAC (RFC 2104) built on gmssl's SM3 alone, independent of OpenSSL."""
    def h(data: bytes) -> bytes:
        return bytes.fromhex(sm3.sm3_hash(func.bytes_to_list(data)))

    if len(key) > 64:
        key = h(key)
    key = key.ljust(64, b"\0")
    inner = h(bytes(b ^ 0x36 for b in key) + msg)
    return h(bytes(b ^ 0x5C for b in key) + inner).hex()


# --- standard vectors ----------------------------------------------------------------------------
def test_sm4_standard_vector_cryptography_and_gmssl() -> None:
    enc = Cipher(algorithms.SM4(STD_KEY), modes.ECB()).encryptor()
    assert enc.update(STD_KEY) + enc.finalize() == STD_CT
    # gmssl always pads (PKCS7): the first block is the raw block cipher output.
    assert _gmssl(STD_KEY, sm4.SM4_ENCRYPT).crypt_ecb(STD_KEY)[:16] == STD_CT
    dec = Cipher(algorithms.SM4(STD_KEY), modes.ECB()).decryptor()
    assert dec.update(STD_CT) + dec.finalize() == STD_KEY


@pytest.mark.parametrize(
    ("message", "digest"), [(b"abc", SM3_ABC), (b"abcd" * 16, SM3_ABCD16)]
)
def test_sm3_standard_vectors(message: bytes, digest: str) -> None:
    assert hashlib.new("sm3", message).hexdigest() == digest
    assert sm3.sm3_hash(func.bytes_to_list(message)) == digest
    assert crypto.sm3_hex(message) == digest
    assert crypto._gmssl_sm3(message).hex() == digest  # the no-OpenSSL fallback


@given(key=st.binary(max_size=100), msg=st.binary(max_size=200))
@settings(max_examples=40, deadline=None)
def test_hmac_sm3_matches_gmssl_construction(key: bytes, msg: bytes) -> None:
    expected = _gmssl_hmac_sm3(key, msg)
    assert hmac.new(key, msg, "sm3").hexdigest() == expected
    assert crypto.hmac_sm3_hex(key, msg) == expected


def test_hmac_sm3_fallback_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(crypto, "_HAS_OPENSSL_SM3", False)
    key, msg = os.urandom(32), b"phone\x0013800138000"
    assert crypto.hmac_sm3_hex(key, msg) == hmac.new(key, msg, "sm3").hexdigest()
    assert crypto.sm3_hex(b"abc") == SM3_ABC


# --- FieldCipher: SM4-CBC ------------------------------------------------------------------------
@given(text=st.text(max_size=300))
@settings(max_examples=100, deadline=None)
def test_encrypt_roundtrip(text: str) -> None:
    c = FieldCipher(KeyRing({1: KEY1}, 1, INDEX_KEY))
    token = c.encrypt(text)
    assert re.fullmatch(r"1:[A-Za-z0-9+/]+=*", token)
    assert c.decrypt(token) == text


def test_encrypt_is_randomised_and_hides_plaintext(cipher: FieldCipher) -> None:
    a, b = cipher.encrypt("110101194503020012"), cipher.encrypt("110101194503020012")
    assert a != b
    assert "1101011945" not in a
    assert cipher.encrypt(None) is None and cipher.decrypt(None) is None


def test_token_decrypts_with_gmssl_cbc(cipher: FieldCipher) -> None:
    text = "张三华 住在幸福路8号"
    blob = base64.b64decode(cipher.encrypt(text).split(":", 1)[1])
    iv, body = blob[:16], blob[16:]
    assert _gmssl(KEY1, sm4.SM4_DECRYPT).crypt_cbc(iv, body).decode() == text


def test_gmssl_cbc_ciphertext_decrypts_with_field_cipher(cipher: FieldCipher) -> None:
    text, iv = "13800138000", os.urandom(16)
    body = _gmssl(KEY1, sm4.SM4_ENCRYPT).crypt_cbc(iv, text.encode())
    assert cipher.decrypt("1:" + base64.b64encode(iv + body).decode()) == text


def test_json_roundtrip(cipher: FieldCipher) -> None:
    obj = {"address": "幸福路8号", "date": "2025-01-02", "n": [1, 2, {"x": None}]}
    assert cipher.decrypt_json(cipher.encrypt_json(obj)) == obj
    assert cipher.decrypt_json(None) is None


@pytest.mark.parametrize("token", ["garbage", "x:AAAA", "1:not base64!", "1:" + "A" * 8,
                                   "9:" + base64.b64encode(bytes(32)).decode()])
def test_malformed_tokens_raise(cipher: FieldCipher, token: str) -> None:
    with pytest.raises(DecryptionError):
        cipher.decrypt(token)


def test_wrong_key_never_yields_plaintext(cipher: FieldCipher) -> None:
    token = cipher.encrypt("张三华")
    other = FieldCipher(KeyRing({1: KEY2}, 1, INDEX_KEY))
    try:
        assert other.decrypt(token) != "张三华"
    except DecryptionError:
        pass


def test_key_rotation(cipher: FieldCipher) -> None:
    old = cipher.encrypt("幸福路8号")
    rotated = FieldCipher(KeyRing({1: KEY1, 2: KEY2}, 2, INDEX_KEY))
    new = rotated.encrypt("幸福路8号")
    assert old.startswith("1:") and new.startswith("2:")
    assert rotated.decrypt(old) == rotated.decrypt(new) == "幸福路8号"
    again = rotated.reencrypt(old)
    assert rotated.key_version(again) == 2 and rotated.decrypt(again) == "幸福路8号"
    assert rotated.reencrypt(new) == new
    with pytest.raises(DecryptionError):  # retired key no longer loaded
        FieldCipher(KeyRing({2: KEY2}, 2, INDEX_KEY)).decrypt(old)
    # the blind index does not depend on SM4 keys, so rotation keeps lookups working
    assert rotated.blind_index("13800138000", "phone") == cipher.blind_index("13800138000", "phone")


# --- blind index ---------------------------------------------------------------------------------
def test_blind_index_is_keyed_sm3_with_purpose(cipher: FieldCipher) -> None:
    got = cipher.blind_index("13800138000", "phone")
    assert got == _gmssl_hmac_sm3(INDEX_KEY, b"phone\x0013800138000")
    assert re.fullmatch(r"[0-9a-f]{64}", got)
    assert got != cipher.blind_index("13800138000", "sender")
    assert got != FieldCipher(KeyRing({1: KEY1}, 1, bytes(32))).blind_index("13800138000", "phone")
    assert cipher.blind_index(None, "phone") is None
    with pytest.raises(ValueError):
        cipher.blind_index("x", "Bad Purpose")


@pytest.mark.parametrize(
    "variant", ["13800138000", "138 0013 8000", "+8613800138000", "+86 138-0013-8000",
                "8613800138000", "008613800138000", "１３８００１３８０００"],
)
def test_phone_normalisation(cipher: FieldCipher, variant: str) -> None:
    assert cipher.blind_index(variant, "phone") == cipher.blind_index("13800138000", "phone")


def test_id_normalisation(cipher: FieldCipher) -> None:
    base = cipher.blind_index("11010119450302001X", "id_number")
    assert cipher.blind_index(" 110101 19450302 001x ", "id_number") == base
    assert cipher.blind_index("110101194503020012", "id_number") != base


# --- keys ----------------------------------------------------------------------------------------
def test_load_keys_from_env() -> None:
    env = {"SM4_KEYS": f"1:{KEY1.hex()}, 2:{KEY2.hex()}", "SM4_ACTIVE_KEY": "1",
           "INDEX_KEY": INDEX_KEY.hex()}
    ring = load_keys(env, Path("/nonexistent/keys.json"))
    assert ring.sm4_keys == {1: KEY1, 2: KEY2} and ring.active_version == 1
    assert ring.index_key == INDEX_KEY and not ring.is_development
    del env["SM4_ACTIVE_KEY"]
    assert load_keys(env, Path("/nonexistent")).active_version == 2  # newest by default


@pytest.mark.parametrize(
    "env",
    [
        {"SM4_KEYS": f"1:{KEY1.hex()}"},  # half configured
        {"INDEX_KEY": INDEX_KEY.hex()},
        {"SM4_KEYS": "1:abcd", "INDEX_KEY": INDEX_KEY.hex()},  # short key
        {"SM4_KEYS": f"one:{KEY1.hex()}", "INDEX_KEY": INDEX_KEY.hex()},
        {"SM4_KEYS": f"1:{KEY1.hex()}", "SM4_ACTIVE_KEY": "3", "INDEX_KEY": INDEX_KEY.hex()},
        {"SM4_KEYS": f"1:{KEY1.hex()}", "INDEX_KEY": "zz"},
    ],
)
def test_bad_env_keys_refuse(env: dict[str, str], tmp_path: Path) -> None:
    with pytest.raises(KeyConfigError):
        load_keys(env, tmp_path / "keys.json")
    assert not (tmp_path / "keys.json").exists()  # no silent fallback to a generated file


def test_key_file_created_once_with_0600(tmp_path: Path) -> None:
    path = tmp_path / "var" / "keys.json"
    ring = load_keys({}, path)
    assert ring.is_development
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    data = json.loads(path.read_text())
    assert len(bytes.fromhex(data["sm4_keys"]["1"])) == 16
    assert load_keys({}, path) == ring  # reused, not regenerated
    assert [p.name for p in path.parent.iterdir()] == ["keys.json"]  # no temp files left
    c = FieldCipher(ring)
    assert FieldCipher(load_keys({}, path)).decrypt(c.encrypt("张三")) == "张三"


def test_key_file_concurrent_first_start(tmp_path: Path) -> None:
    path, rings = tmp_path / "keys.json", []
    threads = [threading.Thread(target=lambda: rings.append(load_keys({}, path)))
               for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(rings) == 8 and all(r == rings[0] for r in rings)


def test_malformed_key_file(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    path.write_text("{}")
    with pytest.raises(KeyConfigError):
        load_keys({}, path)
