"""Rule-based entity extraction for normalised user text (simplified, NFKC half-width).

Every extractor proposes candidates; overlaps are settled by a fixed priority (an ID beats a
phone beats an address beats a date …), then by length. All functions are pure: "today" comes
from the `now` argument, never from the clock.
"""
from __future__ import annotations

import re
from collections.abc import Callable
from datetime import date, datetime, timedelta, timezone
from typing import Any

from assistant.nlu.idcard import validate_id
from assistant.nlu.numerals import chinese_to_int, digit_groups, find_digit_runs, spoken_digits
from assistant.types import Entity

EXTRACTOR = "rules"
# China has no DST, so a fixed offset is exact and needs no tz database.
CHINA_TZ = timezone(timedelta(hours=8), "Asia/Shanghai")

# Higher wins when two candidates overlap.
_PRIORITY = {
    "id_number": 90,
    "phone": 80,
    "address": 70,
    "community": 70,
    "date": 60,
    "time": 50,
    "reference": 40,
    "disability_level": 30,
    "quantity": 20,
    "meal_time": 10,
}

_CN = "零〇一二两三四五六七八九十"  # Chinese numeral characters that can start/continue a number
_NOT_AFTER_NUM = rf"(?<![0-9{_CN}百千万幺洞])"  # left boundary: not inside a longer number

# ---------------------------------------------------------------- parts of the day
_POD_PART = {
    "凌晨": "morning", "清晨": "morning", "早晨": "morning", "早上": "morning", "上午": "morning",
    "早": "morning", "中午": "noon", "晌午": "noon", "下午": "afternoon", "午后": "afternoon",
    "傍晚": "evening", "晚上": "evening", "夜里": "evening", "夜间": "evening", "半夜": "evening",
    "晚": "evening",
}  # fmt: skip
_POD_WORDS = "|".join(w for w in _POD_PART if len(w) > 1)
_POD_AFTER_RE = re.compile(rf"\s*的?({_POD_WORDS})")

# ---------------------------------------------------------------- dates
_REL_DAYS = {
    "大后天": 3, "后天": 2, "明天": 1, "明儿个": 1, "明儿": 1, "明日": 1, "明早": 1, "明晚": 1,
    "今天": 0, "今儿个": 0, "今儿": 0, "今日": 0, "今早": 0, "今晚": 0,
    "昨天": -1, "昨儿": -1, "前天": -2, "大前天": -3,
}  # fmt: skip
_REL_DAY_RE = re.compile("|".join(sorted(_REL_DAYS, key=len, reverse=True)))
_WEEKDAYS = {"一": 0, "二": 1, "三": 2, "四": 3, "五": 4, "六": 5, "日": 6, "天": 6}
_WEEK_SHIFT = {"下下": 2, "下": 1, "这": 0, "本": 0, "上": -1}
_WEEKDAY_RE = re.compile(
    rf"(?<![0-9{_CN}几每个])(?P<rel>下下|下|上|这|本)?个?(?:周|星期|礼拜)(?P<wd>[一二三四五六日天1-7])"
)
_MONTH = r"(?:1[0-2]|0?[1-9]|十[一二]?|[一二三四五六七八九])"
_DAY = r"(?:3[01]|[12][0-9]|0?[1-9]|三十一?|二?十[一二三四五六七八九]?|[一二三四五六七八九])"
_ISO_DATE_RE = re.compile(r"(?<![0-9])(?P<y>[0-9]{4})(?P<sep>[-/.])(?P<m>[0-9]{1,2})(?P=sep)(?P<d>[0-9]{1,2})(?![0-9])")
_MONTH_DAY_RE = re.compile(
    rf"{_NOT_AFTER_NUM}(?:(?P<y>[0-9]{{4}}|[零〇一二三四五六七八九]{{4}})年|(?P<yrel>今年|明年|去年))?"
    rf"(?P<m>{_MONTH})月份?(?P<d>{_DAY})(?:号|日)"
)
_REL_MONTH_RE = re.compile(rf"(?P<rel>下下|下|这|本)个?月(?P<d>{_DAY})(?:号|日)")
# "3号" alone; not "3号楼", "中山路3号", "第3号", "月3号" (handled above).
_DAY_ONLY_RE = re.compile(
    rf"(?<![0-9{_CN}月第编牌型路街道巷弄村区组楼栋幢院])(?P<d>{_DAY})(?P<suf>号|日)"
    r"(?![楼栋幢单门室院床线窗口房车机台柜位座层码病桌铺馆屋厅站箱格地路街道巷弄里村组队])"
)

# ---------------------------------------------------------------- times
_HOUR = r"(?:2[0-4]|[01]?[0-9]|二十[一二三四]?|十[一二]?|[零一二两三四五六七八九])"
_MINUTE = (
    r"(?:半|一刻|三刻|[0-5][0-9]分?|[0-9]分|零[一二三四五六七八九]分?"
    r"|[一二三四五]?十[一二三四五六七八九]?分?|[一二三四五六七八九]分)"
)
# The hour may follow a weekday digit ("星期三三点") but no other numeral.
_HOUR_LEFT = rf"(?:(?<![0-9{_CN}百])|(?<=[周期拜][一二三四五六日天]))"
_POD_PREFIX = rf"(?:(?P<pod>{_POD_WORDS})|(?<![今明昨当])(?P<pod1>[早晚]))?"
_TIME_RE = re.compile(
    rf"{_POD_PREFIX}{_HOUR_LEFT}(?P<h>{_HOUR})点钟?(?P<m>{_MINUTE})?(?![0-9{_CN}])"
)
_CLOCK_RE = re.compile(rf"{_POD_PREFIX}(?<![0-9])(?P<h>2[0-3]|[01]?[0-9]):(?P<m>[0-5][0-9])(?![0-9])")
# "慢一点", "大声一点", "早一点": 一点 meaning "a bit", not 1 o'clock.
_A_BIT_BEFORE = set("慢快大小多少好早晚高低轻重近远差有些再稍清楚声长短便贵")
_A_BIT_AFTER = {"儿", "点"}
_MINUTE_WORDS = {"半": 30, "一刻": 15, "三刻": 45}

# ---------------------------------------------------------------- meals
_MEALS = {
    "早饭": "breakfast", "早餐": "breakfast", "早上": "breakfast",
    "中午": "lunch", "午饭": "lunch", "午餐": "lunch", "中饭": "lunch", "晌午": "lunch",
    "晚饭": "dinner", "晚餐": "dinner", "夜饭": "dinner", "晚上": "dinner",
}  # fmt: skip
_MEAL_RE = re.compile("|".join(_MEALS))

# ---------------------------------------------------------------- quantities, disability level
_QTY_NUM = r"(?:[0-9]{1,3}|[一二两三四五六七八九]?十[一二三四五六七八九]?|[一二两三四五六七八九])"
_QTY_RE = re.compile(
    rf"(?<![0-9{_CN}百千万第几.])(?P<n>{_QTY_NUM})"
    r"(?P<cls>个人|口人|份|位|人|个|张|盒|瓶|碗|袋|包|次|件|桌)"
    r"(?!月|多月|星期|礼拜|小时|钟头|钟)"  # durations, not counts
)
_DISABILITY_RE = re.compile(rf"(?<![0-9{_CN}])(?P<n>[一二三四1-4])级(?!医院|甲|乙)")

# ---------------------------------------------------------------- addresses
_ANUM = r"(?:[0-9]{1,4}|[零〇一二两三四五六七八九十百]{1,4})"
_ROOM = r"(?:[0-9]{2,4}|[零〇一二两三四五六七八九十百幺洞]{2,6})"
_ADDR_RE = re.compile(
    rf"(?<![0-9{_CN}百幺洞])"
    rf"(?:(?P<b>{_ANUM}|[A-Za-z])\s*(?:号楼|栋|幢|座|号?楼(?=\s*{_ANUM}\s*(?:单元|门))))?"
    rf"(?:\s*(?P<u>{_ANUM})\s*(?:单元|(?P<gate>门)))?"
    rf"(?:\s*(?P<r>{_ROOM})\s*(?P<rs>室|号|房)?(?![点时份个位人0-9{_CN}]))?"
)
_COMMUNITY_SUFFIX = "小区|花园|新村|公寓|家园|大院|社区|苑|里"
_COMMUNITY_RE = re.compile(rf"(?P<name>[\u4e00-\u9fff]{{2,6}}?)(?P<suf>{_COMMUNITY_SUFFIX})")
_COMMUNITY_EXT_RE = re.compile("小区|社区")  # "阳光花园小区"
# Characters that cannot be inside a community name: the name starts after the last one.
_NAME_BOUNDARY = set("我你他她们在住是的到去了呢吧啊嗯就给跟找叫说从市区县省镇路街")
_NAME_LEADING = ("那个", "这个", "就是", "一个")
# "家里", "医院里", "三公里": 里 as "inside", not a 里 community.
_NOT_BEFORE_LI = set("这那哪家心夜屋城村手嘴店院楼区园房间公千万头眼梦")
_ADDR_JOIN_RE = re.compile(r"[\s的]{0,2}")

# ---------------------------------------------------------------- digit runs
_ID_WORDS_RE = re.compile(r"身份证|证件|身份号|证号")
_CARD_WORDS_RE = re.compile(r"银行|卡号")
_REFERENCE_WORDS_RE = re.compile(r"编号|受理号|单号|号码|工单|回执|查询号|案件号")
_MOBILE_RE = re.compile(r"1[3-9][0-9]{9}")
_CONTEXT_CHARS = 12
_MIN_ID_ATTEMPT = 12  # after 身份证: more digits than any phone number is a (short) ID attempt
_STRAY_GROUP = 2  # digits in a group that may be a separate word (两, 三号)
_GLUED_WORD_CHARS = set("号点月日份个位人栋幢楼单级岁年块元")  # words that start with a number


Candidate = tuple[int, Entity]  # (priority, entity)


def _entity(
    kind: str,
    value: Any,
    text: str,
    start: int,
    end: int,
    confidence: float = 1.0,
    meta: dict[str, Any] | None = None,
) -> Candidate:
    ent = Entity(kind, value, start, end, text[start:end], EXTRACTOR, confidence, meta or {})
    return _PRIORITY[kind], ent


# ================================================================ digit-run entities


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
        return _entity("id_number", check.number, text, start, end, meta=meta)
    id_context = _ID_WORDS_RE.search(before) is not None
    if 15 <= n <= 19 or (id_context and _MIN_ID_ATTEMPT <= n):
        # An attempted ID with digits missing or extra: tell the dialogue, never guess a phone.
        odd_length = n in (17, 19) and not _CARD_WORDS_RE.search(before)
        if id_context or odd_length or digits.endswith("X"):
            meta = {"valid": False, "reason": "length", "birth_date": None, "gender": None}
            return _entity("id_number", digits, text, start, end, meta=meta)
        return None
    if _MOBILE_RE.fullmatch(digits):
        return _entity("phone", digits, text, start, end, meta={"kind": "mobile"})
    if n == 13 and digits.startswith("86") and _MOBILE_RE.fullmatch(digits[2:]):
        if text[start - 1 : start] == "+":
            start -= 1  # keep "+86" inside the span
        return _entity("phone", digits[2:], text, start, end, meta={"kind": "mobile"})
    if (landline := _landline(digits)) is not None:
        meta = {"kind": "landline", "area_code": landline[0]}
        return _entity("phone", digits, text, start, end, meta=meta)
    if n == 8:
        keyword = _REFERENCE_WORDS_RE.search(before) is not None
        return _entity("reference", digits, text, start, end, 0.9 if keyword else 0.7)
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


def _digit_run_entities(text: str, today: date) -> list[Candidate]:
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


# ================================================================ dates


def _safe_date(year: int, month: int, day: int) -> date | None:
    try:
        return date(year, month, day)
    except ValueError:
        return None


def _add_months(year: int, month: int, k: int) -> tuple[int, int]:
    y, m = divmod(month - 1 + k, 12)
    return year + y, m + 1


def _weekday_date(today: date, rel: str | None, wd: int) -> date:
    if rel is None:  # bare 周五: the next one strictly after today (today is "今天")
        return today + timedelta(days=(wd - today.weekday() - 1) % 7 + 1)
    monday = today - timedelta(days=today.weekday())
    return monday + timedelta(days=7 * _WEEK_SHIFT[rel] + wd)


def _pod_after(text: str, end: int) -> str | None:
    m = _POD_AFTER_RE.match(text, end)
    return _POD_PART[m.group(1)] if m else None


def _date_candidates(text: str, today: date) -> list[Candidate]:
    found: list[tuple[int, int, date, str | None]] = []  # start, end, date, built-in part of day
    for m in _REL_DAY_RE.finditer(text):
        word = m.group()
        pod = _POD_PART.get(word[-1]) if word[-1] in "早晚" else None
        found.append((m.start(), m.end(), today + timedelta(days=_REL_DAYS[word]), pod))
    for m in _WEEKDAY_RE.finditer(text):
        wd_char = m.group("wd")
        wd = int(wd_char) - 1 if wd_char.isdigit() else _WEEKDAYS[wd_char]
        found.append((m.start(), m.end(), _weekday_date(today, m.group("rel"), wd), None))
    for m in _ISO_DATE_RE.finditer(text):
        if d := _safe_date(int(m.group("y")), int(m.group("m")), int(m.group("d"))):
            found.append((m.start(), m.end(), d, None))
    for m in _MONTH_DAY_RE.finditer(text):
        if d := _month_day(m, today):
            found.append((m.start(), m.end(), d, None))
    for m in _REL_MONTH_RE.finditer(text):
        shift = {"下下": 2, "下": 1}.get(m.group("rel"), 0)
        y, mo = _add_months(today.year, today.month, shift)
        if d := _safe_date(y, mo, _int(m.group("d"))):
            found.append((m.start(), m.end(), d, None))
    for m in _DAY_ONLY_RE.finditer(text):
        after = text[m.end() : m.end() + 1]
        if m.group("suf") == "日" and after and after in _CN:
            continue  # "一日三餐"
        if d := _day_only(_int(m.group("d")), today):
            found.append((m.start(), m.end(), d, None))
    return [
        _entity("date", d.isoformat(), text, s, e, meta={"part_of_day": pod or _pod_after(text, e)})
        for s, e, d, pod in found
    ]


def _int(s: str) -> int:
    value = chinese_to_int(s)
    if value is None:  # the regexes only let well-formed numerals through
        raise ValueError(f"not a numeral: {s!r}")
    return value


def _month_day(m: re.Match[str], today: date) -> date | None:
    month, day = _int(m.group("m")), _int(m.group("d"))
    if m.group("y"):
        return _safe_date(_int(m.group("y")), month, day)
    if m.group("yrel"):
        return _safe_date(today.year + {"今年": 0, "明年": 1, "去年": -1}[m.group("yrel")], month, day)
    # No year: the next such day from today on (a 29 Feb may be up to 4 years away).
    for year in range(today.year, today.year + 5):
        d = _safe_date(year, month, day)
        if d is not None and d >= today:
            return d
    return None


def _day_only(day: int, today: date) -> date | None:
    """A bare day of month ("3号"): this month unless past, else the next month having that day."""
    for k in range(3):
        y, mo = _add_months(today.year, today.month, k)
        d = _safe_date(y, mo, day)
        if d is not None and d >= today:
            return d
    return None


# ================================================================ times


def _apply_pod(hour: int, pod: str | None) -> int:
    """24-hour clock from a 12-hour reading and the spoken part of the day."""
    part = _POD_PART.get(pod) if pod else None
    if part == "afternoon" and hour < 12:
        return hour + 12
    if part == "noon" and 1 <= hour <= 5:  # 中午一点 = 13:00, 中午十二点 = 12:00
        return hour + 12
    if part == "evening":
        if 5 <= hour <= 11:
            return hour + 12
        if hour == 12:
            return 0  # 晚上十二点 = midnight
    if pod == "凌晨" and hour == 12:
        return 0
    return hour % 24


def _context_pod(text: str, start: int) -> str | None:
    """Part of the day carried by a preceding date word: 明晚八点, 今早7点."""
    if start >= 2 and text[start - 1] in "早晚" and text[start - 2] in "今明昨当":
        return text[start - 1]
    return None


def _minutes(s: str | None) -> int:
    if not s:
        return 0
    s = s.removesuffix("分")
    return _MINUTE_WORDS[s] if s in _MINUTE_WORDS else _int(s)


def _time_candidates(text: str) -> list[Candidate]:
    out: list[Candidate] = []
    for regex in (_TIME_RE, _CLOCK_RE):
        for m in regex.finditer(text):
            pod = m.group("pod") or m.group("pod1")
            h_text, m_text = m.group("h"), m.group("m")
            if regex is _TIME_RE and h_text == "一" and not m_text and not m.group().endswith("钟"):
                before, after = text[m.start() - 1 : m.start()], text[m.end() : m.end() + 1]
                if m.group("pod1") or (not pod and (before in _A_BIT_BEFORE or after in _A_BIT_AFTER)):
                    continue  # "早一点" = a bit earlier
            hour, minute = _int(h_text), _minutes(m_text)
            if not 0 <= hour <= 24 or minute > 59:
                continue
            pod = pod or _context_pod(text, m.start())
            value = f"{_apply_pod(hour, pod):02d}:{minute:02d}"
            meta = {"part_of_day": _POD_PART[pod] if pod else None}
            out.append(_entity("time", value, text, m.start(), m.end(), meta=meta))
    return out


# ================================================================ small ones


def _meal_candidates(text: str) -> list[Candidate]:
    return [_entity("meal_time", _MEALS[m.group()], text, *m.span()) for m in _MEAL_RE.finditer(text)]


def _quantity_candidates(text: str) -> list[Candidate]:
    out: list[Candidate] = []
    for m in _QTY_RE.finditer(text):
        unit = "人" if m.group("cls") in ("个人", "口人") else m.group("cls")
        value = _int(m.group("n"))
        if value > 0:
            out.append(_entity("quantity", value, text, *m.span(), meta={"unit": unit}))
    return out


def _disability_candidates(text: str) -> list[Candidate]:
    return [
        _entity("disability_level", _int(m.group("n")), text, *m.span())
        for m in _DISABILITY_RE.finditer(text)
    ]


# ================================================================ addresses


def _communities(text: str) -> list[tuple[int, int, str]]:
    found: list[tuple[int, int, str]] = []
    for m in _COMMUNITY_RE.finditer(text):
        name, suffix = m.group("name"), m.group("suf")
        cut = max((i + 1 for i, c in enumerate(name) if c in _NAME_BOUNDARY), default=0)
        for lead in _NAME_LEADING:
            if name[cut:].startswith(lead):
                cut += len(lead)
        if name[cut:].startswith("家") and len(name) - cut > 2:
            cut += 1  # "我家幸福小区"
        if len(name) - cut < 2 or (suffix == "里" and name[-1] in _NOT_BEFORE_LI):
            continue
        end = m.end()
        if ext := _COMMUNITY_EXT_RE.match(text, end):
            end = ext.end()
        start = m.start() + cut
        found.append((start, end, text[start:end]))
    return found


def _addr_number(s: str | None) -> str | None:
    if not s:
        return None
    if len(s) == 1 and s.isascii() and s.isalpha():
        return s.upper()
    value = chinese_to_int(s)
    return None if value is None else str(value)


def _room_number(s: str) -> str | None:
    digits = spoken_digits(s)  # "五零一" is read digit by digit, "五百零一" positionally
    if digits is not None:
        return digits
    value = chinese_to_int(s)
    return None if value is None else str(value)


def _address_candidates(text: str) -> list[Candidate]:
    communities = _communities(text)
    out: list[Candidate] = []
    used: set[int] = set()  # communities merged into an address
    for m in _ADDR_RE.finditer(text):
        b, u, r, rs = m.group("b"), m.group("u"), m.group("r"), m.group("rs")
        if not (b or (u and not m.group("gate")) or (r and rs == "室")):
            continue
        building, unit, room = _addr_number(b), _addr_number(u), _room_number(r) if r else None
        if (b and building is None) or (u and unit is None) or (r and room is None):
            continue  # "百栋": the character class let a non-number through
        start = m.start() + len(m.group()) - len(m.group().lstrip())
        end = m.start() + len(m.group().rstrip())
        community = None
        for i, (cs, ce, name) in enumerate(communities):
            join = _ADDR_JOIN_RE.match(text, ce)
            if join and join.end() == start:
                community, start = name, cs
                used.add(i)
        value = "".join(
            (community or "", f"{building}栋" if building else "", f"{unit}单元" if unit else "",
             f"{room}室" if room else "")
        )  # fmt: skip
        meta = {"community": community, "building": building, "unit": unit, "room": room}
        out.append(_entity("address", value, text, start, end, meta=meta))
    for i, (cs, ce, name) in enumerate(communities):
        if i not in used:
            out.append(_entity("community", name, text, cs, ce))
    return out


# ================================================================ public API

_EXTRACTORS: tuple[Callable[[str], list[Candidate]], ...] = (
    _time_candidates,
    _meal_candidates,
    _quantity_candidates,
    _disability_candidates,
    _address_candidates,
)


def extract_entities(text: str, now: datetime) -> list[Entity]:
    """All rule-based entities in `text`, non-overlapping, sorted by start."""
    today = now.astimezone(CHINA_TZ).date() if now.tzinfo else now.date()
    candidates = _digit_run_entities(text, today) + _date_candidates(text, today)
    for extractor in _EXTRACTORS:
        candidates += extractor(text)
    candidates.sort(key=lambda c: (-c[0], -(c[1].end - c[1].start), c[1].start))
    taken: list[Entity] = []
    for _, ent in candidates:
        if all(ent.end <= t.start or ent.start >= t.end for t in taken):
            taken.append(ent)
    return sorted(taken, key=lambda e: e.start)


# ================================================================ names (form answers only)

_NAME_FILLERS = ("那个", "嗯", "啊", "喂", "呃", "额", "哦")
_NAME_PREFIXES = (
    "我的名字叫", "我的名字是", "我的名字", "名字叫", "名字是", "姓名是", "姓名叫", "姓名",
    "我叫做", "我叫", "我是", "叫做", "叫",
)  # fmt: skip
_NAME_EDGE = " \t,.!?;:~、。，！？；：…·"
_NAME_TRAILING = "啊呀哈吧呢嘛"
_NAME_REJECT = (
    "不知道", "不对", "取消", "人工", "客服", "不是", "没有", "不要", "不用", "算了", "什么",
    "再说", "重复", "听不清", "没听清", "谢谢", "你好", "您好", "再见", "好的", "是的", "可以", "忘了",
    "我",
)  # fmt: skip
_PLAIN_NAME_RE = re.compile(r"[\u4e00-\u9fff]{2,4}")
_DOTTED_NAME_RE = re.compile(r"[\u4e00-\u9fff]+(?:·[\u4e00-\u9fff]+)+")
_MAX_DOTTED_NAME = 10


def _strip_name(s: str) -> str:
    """Peel fillers, lead-in phrases and trailing particles until nothing changes."""
    while True:
        before = s
        s = s.strip(_NAME_EDGE).rstrip(_NAME_TRAILING)
        for word in _NAME_FILLERS + _NAME_PREFIXES:
            if s.startswith(word):
                s = s[len(word) :]
                break
        if s == before:
            return s


def _plausible_name(s: str) -> bool:
    if any(word in s for word in _NAME_REJECT):
        return False
    if _PLAIN_NAME_RE.fullmatch(s):
        return True
    return len(s) <= _MAX_DOTTED_NAME and _DOTTED_NAME_RE.fullmatch(s) is not None


def _as_name(s: str) -> str | None:
    if " " in s:
        # Normalisation turns "·" into a space: "买买提 艾力"; "张 三" is just a pause.
        joined = s.replace(" ", "")
        s = joined if _PLAIN_NAME_RE.fullmatch(joined) else re.sub(r"\s+", "·", s)
    return s if _plausible_name(s) else None


def extract_name(text: str) -> str | None:
    """The name in an answer to "您叫什么名字" ("嗯，我叫张三啊" -> "张三"), or None."""
    if any(c.isdigit() for c in text):
        return None
    s = _strip_name(re.sub(r"[•・.]", "·", text))
    if "叫" in s:  # "我姓张，叫张建国": the name follows the last 叫
        s = _strip_name(s.rsplit("叫", 1)[1])
    return _as_name(s)
