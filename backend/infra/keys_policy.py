"""Which keys a deployment may start with.

The generated key file (var/keys.json) is right for one machine trying the assistant out; a
production deployment must take its keys from a secret store through SM4_KEYS / INDEX_KEY,
so that a copied disk or backup alone does not open the residents' data.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from backend.infra.crypto import KeyConfigError, KeyRing, load_keys

PRODUCTION_ENVS = frozenset({"production", "prod"})


class KeyPolicyError(KeyConfigError):
    """Keys not fit for this environment: refuse to start."""


def is_production(env: Mapping[str, str]) -> bool:
    return env.get("APP_ENV", "").strip().lower() in PRODUCTION_ENVS


def _looks_like_test_key(key: bytes) -> bool:
    """All one byte, two values repeated, or counting bytes (bytes(range(16)), as in tests)."""
    if len(set(key)) <= 2:
        return True
    steps = {(b - a) % 256 for a, b in zip(key, key[1:], strict=False)}
    return len(steps) == 1


def key_problems(keyring: KeyRing) -> list[str]:
    problems: list[str] = []
    if keyring.is_development:
        problems.append(f"the keys come from the generated development key file {keyring.source}")
    for version, key in sorted(keyring.sm4_keys.items()):
        if _looks_like_test_key(key):
            problems.append(f"SM4 key version {version} is a placeholder or test key")
    if len(set(keyring.sm4_keys.values())) < len(keyring.sm4_keys):
        problems.append("two SM4 key versions have the same key")
    if _looks_like_test_key(keyring.index_key):
        problems.append("INDEX_KEY is a placeholder or test key")
    for version, key in sorted(keyring.audit_keys.items()):
        if _looks_like_test_key(key):
            problems.append(f"audit key version {version} is a placeholder or test key")
    return problems


def _refuse(problems: list[str]) -> KeyPolicyError:
    return KeyPolicyError(
        "refusing to start with APP_ENV=production: " + "; ".join(problems) + ". "
        "Set SM4_KEYS, SM4_ACTIVE_KEY and INDEX_KEY from your secret store (README, Configuration); "
        "to move existing data, put the key file's keys into those variables. "
        "生产环境不能使用自动生成的开发密钥，请通过环境变量配置正式密钥。"
    )


def assert_keys_allowed(settings_env: Mapping[str, str], keyring: KeyRing) -> None:
    """Raises KeyPolicyError when APP_ENV=production and the keys are development keys."""
    if not is_production(settings_env):
        return
    problems = key_problems(keyring)
    if problems:
        raise _refuse(problems)


def load_allowed_keys(settings_env: Mapping[str, str], key_file: Path) -> KeyRing:
    """load_keys + assert_keys_allowed, except that production without key variables is
    refused before a development key file would be generated next to the data."""
    if is_production(settings_env) and not (settings_env.get("SM4_KEYS") or settings_env.get("INDEX_KEY")):
        raise _refuse(["SM4_KEYS and INDEX_KEY are not set (a development key file would be used)"])
    keyring = load_keys(settings_env, key_file)
    assert_keys_allowed(settings_env, keyring)
    return keyring
