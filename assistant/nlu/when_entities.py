"""Entities of time: dates (relative days, weekdays, month/day, ISO), clock times with the
spoken part of the day, and meal times. Pure: "today" is always an argument."""
from __future__ import annotations

import re
from datetime import date, timedelta

from assistant.nlu.entity_base import CN_NUMERALS, NOT_AFTER_NUMBER, POD_PART, POD_WORDS, Candidate, candidate, numeral

_POD_AFTER_RE = re.compile(rf"\s*的?({POD_WORDS})")

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
    rf"(?<![0-9{CN_NUMERALS}几每个])(?P<rel>下下|下|上|这|本)?个?(?:周|星期|礼拜)(?P<wd>[一二三四五六日天1-7])"
)
_MONTH = r"(?:1[0-2]|0?[1-9]|十[一二]?|[一二三四五六七八九])"
_DAY = r"(?:3[01]|[12][0-9]|0?[1-9]|三十一?|二?十[一二三四五六七八九]?|[一二三四五六七八九])"
_ISO_DATE_RE = re.compile(r"(?<![0-9])(?P<y>[0-9]{4})(?P<sep>[-/.])(?P<m>[0-9]{1,2})(?P=sep)(?P<d>[0-9]{1,2})(?![0-9])")
_MONTH_DAY_RE = re.compile(
    rf"{NOT_AFTER_NUMBER}(?:(?P<y>[0-9]{{4}}|[零〇一二三四五六七八九]{{4}})年|(?P<yrel>今年|明年|去年))?"
    rf"(?P<m>{_MONTH})月份?(?P<d>{_DAY})(?:号|日)"
)
_REL_MONTH_RE = re.compile(rf"(?P<rel>下下|下|这|本)个?月(?P<d>{_DAY})(?:号|日)")
# "3号" alone; not "3号楼", "中山路3号", "第3号", "月3号" (handled above).
_DAY_ONLY_RE = re.compile(
    rf"(?<![0-9{CN_NUMERALS}月第编牌型路街道巷弄村区组楼栋幢院])(?P<d>{_DAY})(?P<suf>号|日)"
    r"(?![楼栋幢单门室院床线窗口房车机台柜位座层码病桌铺馆屋厅站箱格地路街道巷弄里村组队])"
)

# ---------------------------------------------------------------- times
_HOUR = r"(?:2[0-4]|[01]?[0-9]|二十[一二三四]?|十[一二]?|[零一二两三四五六七八九])"
_MINUTE = (
    r"(?:半|一刻|三刻|[0-5][0-9]分?|[0-9]分|零[一二三四五六七八九]分?"
    r"|[一二三四五]?十[一二三四五六七八九]?分?|[一二三四五六七八九]分)"
)
# The hour may follow a weekday digit ("星期三三点") but no other numeral.
_HOUR_LEFT = rf"(?:(?<![0-9{CN_NUMERALS}百])|(?<=[周期拜][一二三四五六日天]))"
_POD_PREFIX = rf"(?:(?P<pod>{POD_WORDS})|(?<![今明昨当])(?P<pod1>[早晚]))?"
_TIME_RE = re.compile(
    rf"{_POD_PREFIX}{_HOUR_LEFT}(?P<h>{_HOUR})点钟?(?P<m>{_MINUTE})?(?![0-9{CN_NUMERALS}])"
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
    return POD_PART[m.group(1)] if m else None


def date_candidates(text: str, today: date) -> list[Candidate]:
    found: list[tuple[int, int, date, str | None]] = []  # start, end, date, built-in part of day
    for m in _REL_DAY_RE.finditer(text):
        word = m.group()
        pod = POD_PART.get(word[-1]) if word[-1] in "早晚" else None
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
        if d := _safe_date(y, mo, numeral(m.group("d"))):
            found.append((m.start(), m.end(), d, None))
    for m in _DAY_ONLY_RE.finditer(text):
        after = text[m.end() : m.end() + 1]
        if m.group("suf") == "日" and after and after in CN_NUMERALS:
            continue  # "一日三餐"
        if d := _day_only(numeral(m.group("d")), today):
            found.append((m.start(), m.end(), d, None))
    return [
        candidate("date", d.isoformat(), text, s, e, meta={"part_of_day": pod or _pod_after(text, e)})
        for s, e, d, pod in found
    ]


def _month_day(m: re.Match[str], today: date) -> date | None:
    month, day = numeral(m.group("m")), numeral(m.group("d"))
    if m.group("y"):
        return _safe_date(numeral(m.group("y")), month, day)
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


def _apply_pod(hour: int, pod: str | None) -> int:
    """24-hour clock from a 12-hour reading and the spoken part of the day."""
    part = POD_PART.get(pod) if pod else None
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
    return _MINUTE_WORDS[s] if s in _MINUTE_WORDS else numeral(s)


def time_candidates(text: str) -> list[Candidate]:
    out: list[Candidate] = []
    for regex in (_TIME_RE, _CLOCK_RE):
        for m in regex.finditer(text):
            pod = m.group("pod") or m.group("pod1")
            h_text, m_text = m.group("h"), m.group("m")
            if regex is _TIME_RE and h_text == "一" and not m_text and not m.group().endswith("钟"):
                before, after = text[m.start() - 1 : m.start()], text[m.end() : m.end() + 1]
                if m.group("pod1") or (not pod and (before in _A_BIT_BEFORE or after in _A_BIT_AFTER)):
                    continue  # "早一点" = a bit earlier
            hour, minute = numeral(h_text), _minutes(m_text)
            if not 0 <= hour <= 24 or minute > 59:
                continue
            pod = pod or _context_pod(text, m.start())
            value = f"{_apply_pod(hour, pod):02d}:{minute:02d}"
            meta = {"part_of_day": POD_PART[pod] if pod else None}
            out.append(candidate("time", value, text, m.start(), m.end(), meta=meta))
    return out


def meal_candidates(text: str) -> list[Candidate]:
    return [candidate("meal_time", _MEALS[m.group()], text, *m.span()) for m in _MEAL_RE.finditer(text)]
