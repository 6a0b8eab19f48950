"""Case reference numbers residents say or key in: 8 digits = kind + 6 random + Luhn check.

Short enough to read out digit by digit on the phone; the check digit catches a single
mistyped digit and most swaps of neighbours before we query anything.
"""
from __future__ import annotations

import secrets

KIND_DIGITS: dict[str, str] = {
    "application": "1",
    "booking": "2",
    "ticket": "3",
    "handoff": "4",
    "proxy_request": "5",
}
DIGIT_KINDS: dict[str, str] = {digit: kind for kind, digit in KIND_DIGITS.items()}
REFERENCE_LENGTH = 8


def luhn_check_digit(digits: str) -> str:
    """The digit that makes `digits + check` pass the Luhn test."""
    total = 0
    # Walking from the right, the digit next to the (future) check digit is doubled.
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 0:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return str((10 - total % 10) % 10)


def new_reference(kind: str) -> str:
    try:
        prefix = KIND_DIGITS[kind]
    except KeyError:
        raise ValueError(f"unknown case kind {kind!r}") from None
    body = prefix + f"{secrets.randbelow(1_000_000):06d}"
    return body + luhn_check_digit(body)


def is_valid_reference(value: str) -> bool:
    return (
        len(value) == REFERENCE_LENGTH
        and value.isascii()
        and value.isdigit()
        and value[0] in DIGIT_KINDS
        and luhn_check_digit(value[:-1]) == value[-1]
    )


def reference_kind(value: str) -> str | None:
    """The kind a valid reference was issued for, else None."""
    return DIGIT_KINDS[value[0]] if is_valid_reference(value) else None
