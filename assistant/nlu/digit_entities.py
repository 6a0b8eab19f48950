"""Entities read from numbers: a digit run (spoken or keyed) as an ID number, a phone
(mobile or landline) or a case reference, and small counted amounts (portions, people) and
disability levels."""
from __future__ import annotations

import re
from datetime import date

from assistant.nlu.entity_base import CN_NUMERALS, Candidate, candidate, numeral
from assistant.nlu.idcard import validate_id
from assistant.nlu.numerals import digit_groups, find_digit_runs

# ---------------------------------------------------------------- digit runs
_ID_WORDS_RE = re.compile(r"身份证|证件|身份号|证号")
_CARD_WORDS_RE = re.compile(r"银行|卡号")
_REFERENCE_WORDS_RE = re.compile(r"编号|受理号|单号|号码|工单|回执|查询号|案件号")
_MOBILE_RE = re.compile(r"1[3-9][0-9]{9}")
_CONTEXT_CHARS = 12
_MIN_ID_ATTEMPT = 12  # after 身份证: more digits than any phone number is a (short) ID attempt
_STRAY_GROUP = 2  # digits in a group that may be a separate word (两, 三号)
_GLUED_WORD_CHARS = set("号点月日份个位人栋幢楼单级岁年块元")  # words that start with a number

# ---------------------------------------------------------------- quantities, disability level
_QTY_NUM = r"(?:[0-9]{1,3}|[一二两三四五六七八九]?十[一二三四五六七八九]?|[一二两三四五六七八九])"
_QTY_RE = re.compile(
    rf"(?<![0-9{CN_NUMERALS}百千万第几.])(?P<n>{_QTY_NUM})"
    r"(?P<cls>个人|口人|份|位|人|个|张|盒|瓶|碗|袋|包|次|件|桌)"
    r"(?!月|多月|星期|礼拜|小时|钟头|钟)"  # durations, not counts
)
_DISABILITY_RE = re.compile(rf"(?<![0-9{CN_NUMERALS}])(?P<n>[一二三四1-4])级(?!医院|甲|乙)")


def _landline(digits: str) -> tuple[str, str] | None:
    """(area code, local number) for 0 + 2/3-digit area code + 7/8-digit number."""
    if len(digits) not in (10, 11, 12) or not digits.startswith("0"):
        return None
    split = 3 if digits[1] in "12" else 4  # 010, 02x are the only 3-digit area codes
    area, local = digits[:split], digits[split:]
    if len(local) in (7, 8) and local[0] in "23456789":
        return area, local
    return None


def _classify_digits(digits: str, text: str, start: int, end: int, today: date) -> Candidate | None:
    """The entity a whole digit run stands for, if any."""
    n = len(digits)
    before = text[max(0, start - _CONTEXT_CHARS) : start]
    if n == 18:
        check = validate_id(digits, today)
        meta = {
            "valid": check.valid,
            "reason": check.reason,
            "birth_date": check.birth_date.isoformat() if check.birth_date else None,
            "gender": check.gender,
        }
        return candidate("id_number", check.number, text, start, end, meta=meta)
    id_context = _ID_WORDS_RE.search(before) is not None
    if 15 <= n <= 19 or (id_context and _MIN_ID_ATTEMPT <= n):
        # An attempted ID with digits missing or extra: tell the dialogue, never guess a phone.
        odd_length = n in (17, 19) and not _CARD_WORDS_RE.search(before)
        if id_context or odd_length or digits.endswith("X"):
            meta = {"valid": False, "reason": "length", "birth_date": None, "gender": None}
            return candidate("id_number", digits, text, start, end, meta=meta)
        return None
    if _MOBILE_RE.fullmatch(digits):
        return candidate("phone", digits, text, start, end, meta={"kind": "mobile"})
    if n == 13 and digits.startswith("86") and _MOBILE_RE.fullmatch(digits[2:]):
        if text[start - 1 : start] == "+":
            start -= 1  # keep "+86" inside the span
        return candidate("phone", digits[2:], text, start, end, meta={"kind": "mobile"})
    if (landline := _landline(digits)) is not None:
        meta = {"kind": "landline", "area_code": landline[0]}
        return candidate("phone", digits, text, start, end, meta=meta)
    if n == 8:
        keyword = _REFERENCE_WORDS_RE.search(before) is not None
        return candidate("reference", digits, text, start, end, 0.9 if keyword else 0.7)
    return None


def _trimmed_spans(text: str, start: int, end: int) -> list[tuple[int, int, str]]:
    """Shorter readings of a run that did not classify, most likely first.

    Punctuation becomes spaces in normalisation, so "13800138000，两份" arrives as the run
    "13800138000 两": stray 1–2 digit groups at either end belong to the next word. Without
    a pause, "…八零零零三号" glues the 三 of 三号 on: drop 1–2 digits before such a word.
    """
    groups = digit_groups(text, start, end)
    spans = [(groups[0][0], groups[-1][1], "".join(g[2] for g in groups))]
    lo, hi = 0, len(groups)
    while hi - lo > 1 and len(groups[hi - 1][2]) <= _STRAY_GROUP:
        hi -= 1
        spans.append((groups[lo][0], groups[hi - 1][1], "".join(g[2] for g in groups[lo:hi])))
    while hi - lo > 1 and len(groups[lo][2]) <= _STRAY_GROUP:
        lo += 1
        spans.append((groups[lo][0], groups[hi - 1][1], "".join(g[2] for g in groups[lo:hi])))
    whole = spans[0][2]
    if text[end : end + 1] in _GLUED_WORD_CHARS and not whole.endswith("X"):
        spans += [(start, end - k, whole[:-k]) for k in (1, 2) if len(groups[-1][2]) > k]
    return spans[1:]


def digit_run_candidates(text: str, today: date) -> list[Candidate]:
    out: list[Candidate] = []
    for start, end, digits in find_digit_runs(text):
        found = _classify_digits(digits, text, start, end, today)
        if found is None:
            for s, e, d in _trimmed_spans(text, start, end):
                if found := _classify_digits(d, text, s, e, today):
                    break
        if found is not None:
            out.append(found)
    return out


def quantity_candidates(text: str) -> list[Candidate]:
    out: list[Candidate] = []
    for m in _QTY_RE.finditer(text):
        unit = "人" if m.group("cls") in ("个人", "口人") else m.group("cls")
        value = numeral(m.group("n"))
        if value > 0:
            out.append(candidate("quantity", value, text, *m.span(), meta={"unit": unit}))
    return out


def disability_candidates(text: str) -> list[Candidate]:
    return [
        candidate("disability_level", numeral(m.group("n")), text, *m.span())
        for m in _DISABILITY_RE.finditer(text)
    ]
