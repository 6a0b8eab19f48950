"""Mainland resident identity card numbers (GB 11643-1999, 18 characters).

Layout: 6-digit region code, 8-digit birth date YYYYMMDD, 3-digit sequence (odd = male),
1 check character (ISO 7064 MOD 11-2, "X" stands for 10).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date

_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_CHECK_CHARS = "10X98765432"
_SHAPE_RE = re.compile(r"[0-9]{17}[0-9X]")
MAX_AGE = 130


def check_digit(first17: str) -> str:
    """Check character for the first 17 digits of an ID number."""
    if len(first17) != 17 or not first17.isascii() or not first17.isdigit():
        raise ValueError("need exactly 17 ASCII digits")
    return _CHECK_CHARS[sum(int(c) * w for c, w in zip(first17, _WEIGHTS, strict=True)) % 11]


@dataclass(frozen=True)
class IdCheck:
    number: str
    valid: bool
    # None | "length" | "format" (non-digit inside) | "region" | "birth_date" | "checksum"
    reason: str | None
    # Filled whenever readable, even if invalid: the dialogue can read it back to locate a typo.
    birth_date: date | None
    gender: str | None  # "male" | "female"


def age_on(birth: date, day: date) -> int:
    """Whole years from `birth` to `day` (a 29 Feb birthday is reached on 1 Mar in common years)."""
    return day.year - birth.year - ((day.month, day.day) < (birth.month, birth.day))


def _birth_date(digits: str) -> date | None:
    try:
        return date(int(digits[:4]), int(digits[4:6]), int(digits[6:8]))
    except ValueError:
        return None


def validate_id(number: str, today: date) -> IdCheck:
    """Validate an 18-character ID number; reasons are checked in the order listed in IdCheck.

    Region and birth date come before the checksum so that the dialogue can name the part
    that is wrong when it can.
    """
    n = number.strip().upper()
    if len(n) != 18:
        return IdCheck(n, False, "length", None, None)
    if not _SHAPE_RE.fullmatch(n):
        return IdCheck(n, False, "format", None, None)
    gender = "male" if int(n[16]) % 2 else "female"
    birth = _birth_date(n[6:14])
    if birth is not None and (birth > today or age_on(birth, today) > MAX_AGE):
        birth = None
    if n[0] not in "12345678":
        return IdCheck(n, False, "region", birth, gender)
    if birth is None:
        return IdCheck(n, False, "birth_date", None, gender)
    if check_digit(n[:17]) != n[17]:
        return IdCheck(n, False, "checksum", birth, gender)
    return IdCheck(n, True, None, birth, gender)
