"""Throughput of the personal-data crypto: cryptography/hashlib (what backend.infra.crypto uses)
against the pure-Python gmssl reference. Bounded run (about 1 s per measurement); prints one
JSON line with records per second.

    python bench/bench_crypto.py [--seconds 1.0]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gmssl import func, sm3, sm4  # noqa: E402

from backend.infra import crypto  # noqa: E402
from backend.infra.crypto import FieldCipher, KeyRing  # noqa: E402

# A typical record: the JSON of an application's other slots (~150 bytes of UTF-8).
RECORD = {"address": "幸福路8号3单元502", "relation": "本人", "date": "2025-03-02",
          "note": "需要上门办理，下午在家"}
PHONE = "13800138000"


def rate(fn: Callable[[], object], seconds: float, max_calls: int = 2_000_000) -> float:
    """Calls per second of fn, measured for about `seconds` (after a short warm-up)."""
    for _ in range(10):
        fn()
    calls, start = 0, time.perf_counter()
    deadline = start + seconds
    batch = 16
    while calls < max_calls:
        for _ in range(batch):
            fn()
        calls += batch
        now = time.perf_counter()
        if now >= deadline:
            return calls / (now - start)
        batch = min(batch * 2, 4096)
    return calls / (time.perf_counter() - start)


def gmssl_hmac_sm3(key: bytes, msg: bytes) -> str:
    def h(data: bytes) -> bytes:
        return bytes.fromhex(sm3.sm3_hash(func.bytes_to_list(data)))

    key = key.ljust(64, b"\0")
    return h(bytes(b ^ 0x5C for b in key) + h(bytes(b ^ 0x36 for b in key) + msg)).hex()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=1.0)
    args = parser.parse_args()
    seconds = min(max(args.seconds, 0.05), 10.0)

    key, index_key = os.urandom(16), os.urandom(32)
    cipher = FieldCipher(KeyRing({1: key}, 1, index_key))
    plaintext = json.dumps(RECORD, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    data = plaintext.encode()

    def field_cipher_roundtrip() -> None:
        assert cipher.decrypt_json(cipher.encrypt_json(RECORD)) == RECORD

    from cryptography.hazmat.primitives import padding
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    def cryptography_raw_roundtrip() -> None:
        iv = os.urandom(16)
        padder = padding.PKCS7(128).padder()
        e = Cipher(algorithms.SM4(key), modes.CBC(iv)).encryptor()
        ct = e.update(padder.update(data) + padder.finalize()) + e.finalize()
        d = Cipher(algorithms.SM4(key), modes.CBC(iv)).decryptor()
        unpadder = padding.PKCS7(128).unpadder()
        assert unpadder.update(d.update(ct) + d.finalize()) + unpadder.finalize() == data

    enc, dec = sm4.CryptSM4(), sm4.CryptSM4()
    enc.set_key(key, sm4.SM4_ENCRYPT)
    dec.set_key(key, sm4.SM4_DECRYPT)

    def gmssl_roundtrip() -> None:
        iv = os.urandom(16)
        assert dec.crypt_cbc(iv, enc.crypt_cbc(iv, data)) == data

    message = b"phone\0" + PHONE.encode()
    assert gmssl_hmac_sm3(index_key, message) == cipher.blind_index(PHONE, "phone")

    results = {
        "sm4_cbc_encrypt_decrypt_per_s": {
            "cryptography_fieldcipher": round(rate(field_cipher_roundtrip, seconds)),
            "gmssl": round(rate(gmssl_roundtrip, seconds)),
            "cryptography_raw": round(rate(cryptography_raw_roundtrip, seconds)),
        },
        "sm3_blind_index_per_s": {
            "hashlib_fieldcipher": round(rate(lambda: cipher.blind_index(PHONE, "phone"), seconds)),
            "gmssl": round(rate(lambda: gmssl_hmac_sm3(index_key, message), seconds)),
        },
    }
    for group in results.values():
        ours, reference = list(group.values())[:2]
        group["speedup"] = round(ours / reference, 1)  # FieldCipher over gmssl
    print(json.dumps({
        "bench": "crypto",
        "record_bytes": len(data),
        "openssl_sm3": crypto._HAS_OPENSSL_SM3,
        "python": platform.python_version(),
        "seconds_per_measurement": seconds,
        **results,
    }, ensure_ascii=False))


if __name__ == "__main__":
    main()
