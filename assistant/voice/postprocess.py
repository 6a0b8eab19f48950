"""Recogniser output → text for people and text for the core.

Whisper writes Mandarin in traditional or simplified characters at random and numbers as Arabic
digits ("設定29度"). We want:
- `spoken_form`: simplified, numbers as they were said ("设定二十九度", "二零一一年", "幺三八…" is
  kept as said). This is what transcripts and CER references use.
- `core_form`: simplified, digit strings (phones, IDs, references: 3+ digits said one by one) as
  Arabic digits, so the NLU and the forms get "13800138000" whatever the recogniser wrote.
"""
from __future__ import annotations

import re
import unicodedata
from functools import lru_cache

import opencc

from assistant.nlu.numerals import find_digit_runs

_DIGIT_WORD = "零一二三四五六七八九"
# Characters that are not speech: punctuation and symbols of both widths, and spaces.
_NON_SPEECH = re.compile(r"[\s\u3000-\u303f\uff00-\uff0f\uff1a-\uff20\uff3b-\uff40\uff5b-\uff65!-/:-@\[-`{-~·…—–‘’“”]+")
_NUMBER = re.compile(r"(\d+)(?:\.(\d+))?(%?)")
# A number right before these is read digit by digit when it has 3+ digits (years, room numbers).
_DIGITWISE_AFTER = "年号室楼栋"


@lru_cache(maxsize=1)
def _t2s() -> opencc.OpenCC:
    return opencc.OpenCC("t2s")


def simplified(text: str) -> str:
    return _t2s().convert(unicodedata.normalize("NFKC", text))


def strip_non_speech(text: str) -> str:
    return _NON_SPEECH.sub("", text)


def int_to_chinese(n: int) -> str:
    """29 → 二十九, 105 → 一百零五, 12000 → 一万二千 (how a quantity is read)."""
    if n == 0:
        return "零"
    if n >= 100_000_000:
        high, low = divmod(n, 100_000_000)
        return int_to_chinese(high) + "亿" + (("零" if low < 10_000_000 else "") + int_to_chinese(low) if low else "")
    if n >= 10_000:
        high, low = divmod(n, 10_000)
        return int_to_chinese(high) + "万" + (("零" if low < 1000 else "") + int_to_chinese(low) if low else "")
    out, zero = "", False
    for unit_value, unit in ((1000, "千"), (100, "百"), (10, "十"), (1, "")):
        d, n = divmod(n, unit_value)
        if d:
            if zero and out:
                out += "零"
            out += _DIGIT_WORD[d] + unit
            zero = False
        elif out:
            zero = True
    if out.startswith("一十"):
        out = out[1:]  # 十五, not 一十五
    return out


def digits_to_words(digits: str) -> str:
    return "".join(_DIGIT_WORD[int(d)] for d in digits)


def _spoken_number(m: re.Match[str], text: str) -> str:
    whole, frac, percent = m.group(1), m.group(2), m.group(3)
    following = text[m.end() : m.end() + 1]
    if len(whole) > 1 and whole.startswith("0") or len(whole) >= 5 and not frac:
        said = digits_to_words(whole)  # phone numbers, IDs, codes
    elif len(whole) >= 3 and following and following in _DIGITWISE_AFTER:
        said = digits_to_words(whole)  # 2011年, 302室
    else:
        said = int_to_chinese(int(whole))
    if frac:
        said += "点" + digits_to_words(frac)
    return "百分之" + said if percent else said


def spoken_form(text: str) -> str:
    """Simplified characters, no punctuation, Arabic numbers rewritten as Mandarin reads them."""
    text = simplified(text)
    return strip_non_speech(_NUMBER.sub(lambda m: _spoken_number(m, text), text))


def core_form(text: str, min_digits: int = 3) -> str:
    """Simplified text for the NLU with spoken digit strings as Arabic digits.

    "幺三八 零零幺三 八零零零" → "13800138000"; "二十九度" (a quantity) is left for the NLU's
    number parser. Punctuation between digits goes; other punctuation is kept for the NLU.
    """
    text = simplified(text).strip()
    out: list[str] = []
    last = 0
    for start, end, digits in find_digit_runs(text):
        if len(digits.rstrip("X")) < min_digits:
            continue
        out.append(text[last:start])
        out.append(digits)
        last = end
    out.append(text[last:])
    return "".join(out)

