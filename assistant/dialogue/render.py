"""How values are written for reading and spoken for listening (digit by digit, dates in words)."""
from __future__ import annotations

from datetime import date

_SPOKEN_DIGIT = dict(zip("0123456789Xx", ["零", "幺", "二", "三", "四", "五", "六", "七", "八", "九", "叉", "叉"], strict=True))
_WEEKDAY = "一二三四五六日"


def spell_digits(digits: str, group: int = 4) -> str:
    """'12345678' → '幺二三四，五六七八': one syllable per digit, a pause between groups."""
    spoken = [_SPOKEN_DIGIT.get(ch, ch) for ch in digits if not ch.isspace()]
    chunks = ["".join(spoken[i : i + group]) for i in range(0, len(spoken), group)]
    return "，".join(chunks)


def group_phone(phone: str) -> str:
    """'13800138000' → '138 0013 8000' (how a mobile number is written by hand)."""
    if len(phone) == 11 and phone.startswith("1"):
        return f"{phone[:3]} {phone[3:7]} {phone[7:]}"
    return phone


def spell_phone(phone: str) -> str:
    if len(phone) == 11 and phone.startswith("1"):
        return "，".join(spell_digits(part, 8) for part in (phone[:3], phone[3:7], phone[7:]))
    return spell_digits(phone)


def date_words(day: date, today: date) -> str:
    """'明天（11月26日，周四）': relative word when close, always the calendar date and weekday."""
    relative = {0: "今天", 1: "明天", 2: "后天"}.get((day - today).days, "")
    calendar = f"{day.month}月{day.day}日，周{_WEEKDAY[day.weekday()]}"
    return f"{relative}（{calendar}）" if relative else f"{calendar}"


def time_words(hhmm: str) -> str:
    hour, minute = (int(x) for x in hhmm.split(":"))
    part = "上午" if hour < 12 else "下午" if hour < 18 else "晚上"
    shown = hour if hour <= 12 else hour - 12
    tail = "" if minute == 0 else "半" if minute == 30 else f"{minute}分"
    return f"{part}{shown}点{tail}"
