"""Masking of personal data for display and logs. Pure functions, standard library only.

Masked forms keep just enough for a person to recognise their own data on a screen or in a
log line ("138****8000") without the line being useful to anyone else.
"""
from __future__ import annotations

import logging
import re

# 18-character resident ID (GB 11643): 17 digits + a digit or X check character.
_ID_RE = re.compile(r"(?<!\d)\d{17}[\dXx](?!\d)")
# Mainland mobile, optionally written with a +86 / 86 country prefix.
_PHONE_RE = re.compile(r"(?<!\d)((?:\+|00)?86[\s-]?)?(1[3-9]\d{9})(?!\d)")
_PHONE_PREFIX_RE = re.compile(r"^(?:\+|00)?86(?=1[3-9]\d{9}$)")


def _keep_ends(value: str, head: int, tail: int) -> str:
    if len(value) <= head + tail:
        return "*" * len(value)
    return value[:head] + "*" * (len(value) - head - tail) + value[len(value) - tail :]


def mask_id(value: str) -> str:
    """'110101194503020012' -> '110***********0012' (first 3, last 4)."""
    return _keep_ends(value.strip(), 3, 4)


def mask_phone(value: str) -> str:
    """'13800138000' -> '138****8000'; a +86/86 prefix and separators are dropped first."""
    digits = re.sub(r"[\s()-]", "", value)
    digits = _PHONE_PREFIX_RE.sub("", digits)
    return _keep_ends(digits, 3, 4)


def mask_name(value: str) -> str:
    """'张三华' -> '张*华', '张三' -> '张*', '欧阳娜娜' -> '欧**娜'."""
    name = value.strip()
    if len(name) <= 1:
        return "*" * len(name)
    if len(name) == 2:
        return name[0] + "*"
    return name[0] + "*" * (len(name) - 2) + name[-1]


def mask_text(text: str) -> str:
    """Masks every ID number and mobile number found inside free text."""
    text = _ID_RE.sub(lambda m: mask_id(m.group(0)), text)
    return _PHONE_RE.sub(lambda m: (m.group(1) or "") + mask_phone(m.group(2)), text)


class MaskingFilter(logging.Filter):
    """Attach to handlers (or loggers) so no ID or phone number reaches a log sink in clear.

    The message is formatted once and the args cleared, because masking args one by one would
    miss numbers that only appear after %-formatting and could break '%d' placeholders.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except (TypeError, ValueError, KeyError):  # malformed record: still mask what we can, never drop it
            message = str(record.msg)
        record.msg = mask_text(message)
        record.args = None
        return True
