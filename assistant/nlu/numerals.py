"""Chinese numerals and digit-by-digit readings, as they come out of ASR and SMS.

Two ways of saying numbers must be kept apart:
- quantities: "二十八", "一百零五", "3千5" (positional units 十百千万亿) -> `chinese_to_int`;
- digit strings: "幺三八 零零幺三 八零零零" (phones, IDs, references) -> `spoken_digits`,
  `find_digit_runs`.
"""
from __future__ import annotations

import re

# 幺 is how "1" is read out on phones, 洞 is radio-speak for "0", 两 is "2" before units.
DIGIT_VALUES: dict[str, int] = {
    "零": 0, "〇": 0, "洞": 0,
    "一": 1, "幺": 1,
    "二": 2, "两": 2,
    "三": 3, "四": 4, "五": 5, "六": 6, "七": 7, "八": 8, "九": 9,
}  # fmt: skip
_SMALL_UNITS: dict[str, int] = {"十": 10, "百": 100, "千": 1000}
_BIG_UNITS: dict[str, int] = {"万": 10_000, "亿": 100_000_000}
UNIT_CHARS = "十百千万亿"

_D = "0-9" + "".join(DIGIT_VALUES)
# Characters allowed between digits: pauses that ASR renders as spaces or punctuation.
_S = r"[\s\-‐‑‒–—―,.、]"
_SPOKEN_RE = re.compile(rf"[{_D}](?:{_S}*[{_D}])*(?:{_S}*[xX叉])?")
_RUN_RE = re.compile(rf"[{_D}](?:{_S}{{0,3}}[{_D}])*(?:{_S}{{0,3}}[xX叉](?![A-Za-z]))?")
_GROUP_RE = re.compile(rf"[{_D}xX叉]+")
_TOKEN_RE = re.compile(r"[0-9]+|.", re.S)
# An ID check character only makes sense after (almost) a full ID number.
_MIN_DIGITS_BEFORE_X = 14


def _digit_of(ch: str) -> str:
    if "0" <= ch <= "9":
        return ch
    if ch in "xX叉":
        return "X"
    return str(DIGIT_VALUES[ch])


def _is_digit_char(ch: str) -> bool:
    return "0" <= ch <= "9" or ch in DIGIT_VALUES


def chinese_to_int(s: str) -> int | None:
    """Parse a Chinese, Arabic or mixed integer ("二十八", "一百零五", "3千5", "两万"); None if not one.

    A string without any unit character is read digit by digit ("二零二六" -> 2026).
    Colloquial abbreviations follow everyday speech: "三千五" = 3500, "一万二" = 12000.
    """
    s = s.strip()
    if not s:
        return None
    if all(_is_digit_char(c) for c in s):
        return int("".join(_digit_of(c) for c in s))
    return _parse_positional(s)


def _parse_positional(s: str) -> int | None:
    total = 0  # completed 万/亿 groups
    section = 0  # value below the current big unit
    pending: int | None = None  # a digit still waiting for its unit
    last_small: int | None = None
    last_big: int | None = None
    after_zero = False  # "一百零五": a 零 means the next digit is not abbreviated
    for tok in _TOKEN_RE.findall(s):
        if (tok[0].isascii() and tok[0].isdigit()) or tok in DIGIT_VALUES:
            value = int(tok) if tok[0].isascii() else DIGIT_VALUES[tok]
            if value == 0 and not tok[0].isascii():
                after_zero = True
                continue
            if pending is not None:
                return None  # "二三十" (approximate) or "五六" is not one integer
            pending = value
        elif tok in _SMALL_UNITS:
            unit = _SMALL_UNITS[tok]
            if last_small is not None and unit >= last_small:
                return None
            if pending is None:
                if unit != 10:
                    return None
                pending = 1  # bare 十 means 一十
            section += pending * unit
            pending, last_small, after_zero = None, unit, False
        elif tok in _BIG_UNITS:
            big = _BIG_UNITS[tok]
            if last_big is not None and big >= last_big:
                return None
            section += pending or 0
            if section == 0:
                return None
            total += section * big
            section, pending, last_small, last_big, after_zero = 0, None, None, big, False
        else:
            return None
    if pending is not None:
        last_unit = last_small or last_big
        if after_zero or last_unit is None:
            section += pending
        elif pending <= 9:
            section += pending * (last_unit // 10)  # "三千五" -> 3500
        elif pending < last_unit:
            section += pending  # "1万2000"
        else:
            return None
    return total + section


def spoken_digits(s: str) -> str | None:
    """Digit-by-digit reading -> digit string ("幺三八 零零幺三" -> "13800013"); None otherwise.

    Separators (spaces, dashes, commas, dots, 、) may sit between digits; 叉/x/X is accepted only
    as the final character (an ID check character) and returned as "X".
    """
    s = s.strip()
    if not _SPOKEN_RE.fullmatch(s):
        return None
    return "".join(_digit_of(c) for c in s if _is_digit_char(c) or c in "xX叉")


def find_digit_runs(text: str) -> list[tuple[int, int, str]]:
    """Spans of digit sequences in `text` as (start, end, digits), in order.

    Digits glued to a unit character (十百千万亿) belong to a positional number ("二十八",
    "一百零五", "3千5") and are left out, down to the nearest separator. A final 叉/X is kept only
    after 14+ digits (an ID check character). Short runs (a single "一") are returned too:
    callers filter by length.
    """
    runs: list[tuple[int, int, str]] = []
    for m in _RUN_RE.finditer(text):
        groups = digit_groups(text, m.start(), m.end())
        # "3千5, 12345": only the group glued to a unit belongs to the positional number.
        if m.start() > 0 and text[m.start() - 1] in UNIT_CHARS:
            groups = groups[1:]
        if groups and m.end() < len(text) and text[m.end()] in UNIT_CHARS:
            groups = groups[:-1]
        digits = "".join(g[2] for g in groups)
        if digits.endswith("X") and len(digits) - 1 < _MIN_DIGITS_BEFORE_X:
            start, end, last = groups.pop()
            if last != "X":
                groups.append((start, end - 1, last[:-1]))
        if groups:
            runs.append((groups[0][0], groups[-1][1], "".join(g[2] for g in groups)))
    return runs


def digit_groups(text: str, start: int, end: int) -> list[tuple[int, int, str]]:
    """The separator-free pieces of the run text[start:end], as (start, end, digits)."""
    return [
        (g.start(), g.end(), "".join(_digit_of(c) for c in g.group()))
        for g in _GROUP_RE.finditer(text, start, end)
    ]
