"""Small guards shared by every endpoint: constant-time comparison on bytes and query numbers that
answer 400 instead of crashing.

`hmac.compare_digest` raises TypeError on a str with non-ASCII characters, so a token, key or CSRF
value of "é" was a 500; comparing UTF-8 bytes is safe for any input."""
from __future__ import annotations

import hmac

from werkzeug.exceptions import BadRequest


def safe_equal(given: str | bytes | None, expected: str | bytes | None) -> bool:
    """True only when both are non-empty and equal; constant time on the bytes."""
    if not given or not expected:
        return False
    a = given.encode("utf-8", "surrogatepass") if isinstance(given, str) else given
    b = expected.encode("utf-8", "surrogatepass") if isinstance(expected, str) else expected
    return hmac.compare_digest(a, b)


def int_arg(args, name: str, default: int, low: int, high: int) -> int:
    """A whole number from the query string, clamped to [low, high]; anything else is a clear 400."""
    raw = args.get(name)
    if raw is None or raw == "":
        return default
    if not raw.isascii() or not raw.strip().lstrip("-").isdigit():
        raise BadRequest(f"{name} must be a whole number between {low} and {high} / {name} 应为整数")
    return max(low, min(high, int(raw)))
