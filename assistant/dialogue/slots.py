"""Slot extraction and validation, one function per slot type.

Each returns a SlotOutcome: a value, or an error code that names the re-ask response
(`utter_invalid_<slot-type>[_<code>]`) with the parameters it needs.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from assistant.nlu.entities import extract_name
from assistant.nlu.numerals import chinese_to_int, find_digit_runs
from assistant.types import ParseResult


@dataclass(frozen=True)
class SlotOutcome:
    value: Any = None
    error: str | None = None  # None with value None = nothing found
    params: Mapping[str, Any] = field(default_factory=dict)
    derived: Mapping[str, Any] = field(default_factory=dict)  # extra facts (birth date …)

    @property
    def found(self) -> bool:
        return self.value is not None


@dataclass(frozen=True)
class SlotContext:
    now: datetime
    booking_days_ahead: int
    meal_max_portions: int
    requested: bool  # the slot was the question just asked (free text may fill it)
    entity: str | None = None  # for text slots backed by a lookup entity


NOTHING = SlotOutcome()
_HAN = re.compile(r"[\u4e00-\u9fff]")
_MEAL_MODE = {
    "delivery": ("送餐", "送到", "送上门", "送过来", "送家", "送来", "外卖", "上门", "送"),
    "dine_in": ("堂食", "食堂", "饭堂", "去吃", "过去吃", "自己去", "到店", "现场吃"),
}
_RELATION = {
    "son": ("儿子", "仔", "小子"),
    "daughter": ("女儿", "闺女", "女"),
    "spouse": ("老伴", "爱人", "老公", "老婆", "丈夫", "妻子", "媳妇"),
    "grandchild": ("孙子", "孙女", "外孙", "孙"),
    "child": ("子女", "孩子", "儿女"),
    "other": ("侄", "外甥", "亲戚", "邻居", "家属"),
}
_PART_OF_DAY_MEAL = {"morning": "breakfast", "noon": "lunch", "evening": "dinner"}


def _keyword(text: str, table: Mapping[str, tuple[str, ...]]) -> str | None:
    # Longest keyword wins so "送上门" beats "上门" and "外孙" beats "孙".
    best: tuple[int, str] | None = None
    for value, words in table.items():
        for word in words:
            if word in text and (best is None or len(word) > best[0]):
                best = (len(word), value)
    return best[1] if best else None


def _small_number(text: str) -> int | None:
    stripped = re.sub(r"[份个位人碗盒的吧啊呀要来给我就]", "", text).strip()
    if stripped.isdigit():
        return int(stripped)
    return chinese_to_int(stripped) if stripped else None


def id_number(parse: ParseResult, ctx: SlotContext) -> SlotOutcome:
    entity = parse.first("id_number")
    if entity is None:
        if not ctx.requested:
            return NOTHING
        heard = max((len(run) for _, _, run in find_digit_runs(parse.normalized)), default=0)
        if heard >= 6:  # an attempt at an ID: say how many digits were heard
            return SlotOutcome(error="length", params={"digits": heard})
        return SlotOutcome(error="") if _looks_numeric(parse.normalized) else NOTHING
    meta = entity.meta or {}
    if meta.get("valid", True):
        derived = {k: meta[k] for k in ("birth_date", "gender") if meta.get(k)}
        return SlotOutcome(value=str(entity.value).upper(), derived=derived)
    return SlotOutcome(error=meta.get("reason") or "", params={"digits": len(str(entity.value))})


def _looks_numeric(text: str) -> bool:
    return len(re.findall(r"[\d零〇一二三四五六七八九幺两洞叉xX]", text)) >= 6


def phone(parse: ParseResult, ctx: SlotContext) -> SlotOutcome:
    entity = parse.first("phone")
    if entity is not None:
        return SlotOutcome(value=str(entity.value))
    return SlotOutcome(error="") if ctx.requested and _looks_numeric(parse.normalized) else NOTHING


def name(parse: ParseResult, ctx: SlotContext) -> SlotOutcome:
    if not ctx.requested:
        return NOTHING
    value = extract_name(parse.normalized)
    return SlotOutcome(value=value) if value else SlotOutcome(error="")


def address(parse: ParseResult, ctx: SlotContext) -> SlotOutcome:
    entity = parse.first("address") or parse.first("community")
    if entity is not None:
        return SlotOutcome(value=str(entity.value))
    if ctx.requested:
        text = parse.normalized.strip()
        return SlotOutcome(value=text) if len(_HAN.findall(text)) >= 3 else SlotOutcome(error="")
    return NOTHING


def text(parse: ParseResult, ctx: SlotContext) -> SlotOutcome:
    known = parse.first(ctx.entity) if ctx.entity else None
    if known is not None and not ctx.requested:
        return SlotOutcome(value=str(known.text or known.value))
    if not ctx.requested:
        return NOTHING
    value = parse.normalized.strip()
    return SlotOutcome(value=value[:200]) if len(value) >= 2 else SlotOutcome(error="")


def place(parse: ParseResult, ctx: SlotContext) -> SlotOutcome:
    """Where something is: the whole answer ("3栋门口", "菜场对面") when asked; else an address."""
    if ctx.requested:
        value = parse.normalized.strip()
        return SlotOutcome(value=value[:120]) if len(_HAN.findall(value)) >= 2 else SlotOutcome(error="")
    entity = parse.first("address") or parse.first("community")
    return SlotOutcome(value=str(entity.value)) if entity is not None else NOTHING


def disability_level(parse: ParseResult, ctx: SlotContext) -> SlotOutcome:
    entity = parse.first("disability_level")
    level = int(entity.value) if entity is not None else (_small_number(parse.normalized.replace("级", "")) if ctx.requested else None)
    if level is None:
        return SlotOutcome(error="") if ctx.requested else NOTHING
    return SlotOutcome(value=level) if 1 <= level <= 4 else SlotOutcome(error="")


def date_slot(parse: ParseResult, ctx: SlotContext) -> SlotOutcome:
    entity = parse.first("date")
    if entity is None:
        return SlotOutcome(error="") if ctx.requested else NOTHING
    day = date.fromisoformat(str(entity.value))
    today = ctx.now.date()
    if day < today:
        return SlotOutcome(error="past")
    if (day - today).days > ctx.booking_days_ahead:
        return SlotOutcome(error="too_far", params={"days": ctx.booking_days_ahead})
    part = (entity.meta or {}).get("part_of_day")
    derived = {"meal_time": _PART_OF_DAY_MEAL[part]} if part in _PART_OF_DAY_MEAL else {}
    return SlotOutcome(value=day.isoformat(), derived=derived)


def meal_time(parse: ParseResult, ctx: SlotContext) -> SlotOutcome:
    entity = parse.first("meal_time")
    if entity is not None and entity.value in {"breakfast", "lunch", "dinner"}:
        return SlotOutcome(value=entity.value)
    date_entity = parse.first("date")
    part = (date_entity.meta or {}).get("part_of_day") if date_entity else None
    if part in _PART_OF_DAY_MEAL:
        return SlotOutcome(value=_PART_OF_DAY_MEAL[part])
    return SlotOutcome(error="") if ctx.requested else NOTHING


def quantity(parse: ParseResult, ctx: SlotContext) -> SlotOutcome:
    entity = parse.first("quantity")
    count = int(entity.value) if entity is not None else (_small_number(parse.normalized) if ctx.requested else None)
    if count is None:
        return SlotOutcome(error="", params={"max": ctx.meal_max_portions}) if ctx.requested else NOTHING
    if 1 <= count <= ctx.meal_max_portions:
        return SlotOutcome(value=count)
    return SlotOutcome(error="", params={"max": ctx.meal_max_portions})


def meal_mode(parse: ParseResult, ctx: SlotContext) -> SlotOutcome:
    entity = parse.first("meal_mode")
    value = entity.value if entity is not None else _keyword(parse.normalized, _MEAL_MODE)
    if value in _MEAL_MODE:
        return SlotOutcome(value=value)
    return SlotOutcome(error="") if ctx.requested else NOTHING


def service_type(parse: ParseResult, ctx: SlotContext) -> SlotOutcome:
    entity = parse.first("service_type")
    if entity is not None:
        return SlotOutcome(value=str(entity.value))
    return SlotOutcome(error="") if ctx.requested else NOTHING


def time_slot(parse: ParseResult, ctx: SlotContext) -> SlotOutcome:
    entity = parse.first("time")
    if entity is not None:
        return SlotOutcome(value=str(entity.value))
    return SlotOutcome(error="") if ctx.requested else NOTHING


def relation(parse: ParseResult, ctx: SlotContext) -> SlotOutcome:
    entity = parse.first("relation")
    value = entity.value if entity is not None and entity.value in _RELATION else _keyword(parse.normalized, _RELATION)
    if value:
        return SlotOutcome(value=value)
    return SlotOutcome(error="") if ctx.requested else NOTHING


def progress_key(parse: ParseResult, ctx: SlotContext) -> SlotOutcome:
    reference = parse.first("reference")
    if reference is not None:
        return SlotOutcome(value={"reference": str(reference.value)})
    phone_entity = parse.first("phone")
    if phone_entity is not None:
        return SlotOutcome(value={"phone": str(phone_entity.value)})
    return SlotOutcome(error="") if ctx.requested else NOTHING


EXTRACTORS: dict[str, Callable[[ParseResult, SlotContext], SlotOutcome]] = {
    "id_number": id_number,
    "phone": phone,
    "name": name,
    "address": address,
    "place": place,
    "text": text,
    "disability_level": disability_level,
    "date": date_slot,
    "meal_time": meal_time,
    "quantity": quantity,
    "meal_mode": meal_mode,
    "service_type": service_type,
    "time": time_slot,
    "relation": relation,
    "progress_key": progress_key,
}

