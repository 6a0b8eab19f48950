"""Work orders (诉求工单) as a 12345 hotline files them: a two-level taxonomy (area → category)
with the department each goes to, the kind of request, and a short summary for an SMS.

The taxonomy comes from config.yml (`tickets.areas`, `tickets.taxonomy`). Every area is also a
category of its own (its code, its name, its department), so a complaint about unpaid wages
that names no keyword category still has a code to file under and a department to go to.
The NLU uses this to describe a report; the ticket loop uses the same object to route it.
"""
from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

FALLBACK_CODE = "other"
SUMMARY_CHARS = 70  # one SMS segment of Chinese text

# 12345's first-level areas, used when config.yml names none.
DEFAULT_AREAS: tuple[tuple[str, str], ...] = (
    ("construction", "城乡建设"), ("environment", "环境保护"), ("transport", "交通运输"),
    ("labour", "劳动和社会保障"), ("commerce", "商贸旅游"), ("health", "卫生计生"),
    ("education", "教育文体"), ("civil", "民政"), ("police", "公安"), (FALLBACK_CODE, "其他"),
)


@dataclass(frozen=True)
class Area:
    code: str
    name: str
    department: str | None = None
    # Whether a report here is about a place (a street light, a factory) or not (wages, a
    # hospital bill): the form then asks "在哪里？请说小区和几栋" or "事情发生在哪里？单位或地址".
    asks_place: bool = True


@dataclass(frozen=True)
class Category:
    code: str
    name: str
    keywords: tuple[str, ...]
    department: str | None
    area: str = FALLBACK_CODE  # the area's code


@dataclass(frozen=True)
class WorkOrder:
    """What the NLU makes of a report: shown by `parse`, carried to the ticket."""

    kind: str  # 投诉 / 求助 / 咨询 / 建议
    area: str  # first-level name, e.g. 劳动和社会保障
    category: str  # second-level name, e.g. 市政设施 (the area's name when no category matched)
    category_code: str  # Open311 service_code of the ticket
    department: str | None  # None: staff sort it by hand (人工分拣)
    summary: str  # ≤70 characters, for the SMS acknowledgement and the read-back
    substantive: bool  # the text describes a problem (not just "我要报修")
    asks_place: bool = True  # its area is about places (see Area.asks_place)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Taxonomy:
    def __init__(self, categories: Sequence[Category], areas: Sequence[Area] = ()) -> None:
        if not categories and not areas:
            raise ValueError("tickets.taxonomy is empty")
        self.areas = tuple(areas)
        self.area_by_name = {a.name: a for a in self.areas}
        self._area_by_code = {a.code: a for a in self.areas}
        own = [Category(a.code, a.name, (), a.department, a.code) for a in self.areas
               if a.code not in {c.code for c in categories}]
        self.categories = tuple(categories) + tuple(own)
        self._by_code = {c.code: c for c in self.categories}
        for c in categories:
            if self.areas and c.area not in self._area_by_code:
                raise ValueError(f"tickets.taxonomy: category {c.code!r} names unknown area {c.area!r}")
        self.fallback = self._by_code.get(FALLBACK_CODE) or self.categories[-1]

    @classmethod
    def from_config(cls, tickets: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None) -> Taxonomy:
        """`tickets` is config.yml's `tickets` section (or, as before areas existed, its bare
        `taxonomy` list)."""
        if tickets is None or isinstance(tickets, Sequence):
            items, area_items = tickets or (), None
        else:
            items, area_items = tickets.get("taxonomy") or (), tickets.get("areas")
        if area_items is None:
            area_items = [{"code": code, "name": name} for code, name in DEFAULT_AREAS]
        areas = [Area(str(a["code"]), str(a["name"]), a.get("department"), bool(a.get("place", True)))
                 for a in area_items]
        categories = [Category(str(i["code"]), str(i["name"]), tuple(i.get("keywords") or ()),
                               i.get("department"), str(i.get("area") or FALLBACK_CODE)) for i in items]
        return cls(categories, areas)

    def get(self, code: str | None) -> Category | None:
        return self._by_code.get(code or "")

    def area_of(self, category: Category) -> Area | None:
        return self._area_by_code.get(category.area)

    def department(self, category: Category) -> str | None:
        """The category's department, else its area's (None: 人工分拣)."""
        if category.department:
            return category.department
        area = self.area_of(category)
        return area.department if area else None

    def categorise(self, text: str, within: Area | None = None) -> Category:
        """The category whose keywords cover most characters of the text; none → `within`'s own
        category, else the fallback. With `within`, only that area's categories count.

        Each character counts once, for the longest (then earliest) keyword over it, so in
        "楼道灯不亮" 楼道灯 (property) wins over the overlapping 灯不亮 (street light)."""
        pool = [c for c in self.categories if within is None or c.area == within.code]
        hits = sorted(
            ((-len(k), m.start(), k, c) for c in pool for k in c.keywords if k
             for m in re.finditer(re.escape(k), text)),
            key=lambda h: (h[0], h[1]),
        )
        taken: set[int] = set()
        scores: dict[str, int] = {}
        for negative_length, start, _keyword, category in hits:
            span = set(range(start, start - negative_length))
            if span & taken:
                continue
            taken |= span
            scores[category.code] = scores.get(category.code, 0) - negative_length
        if not scores:
            return (self._by_code.get(within.code) if within else None) or self.fallback
        best = max(scores.values())
        return next(c for c in pool if scores.get(c.code) == best)


# --- kind and summary ----------------------------------------------------------------------------
# First match wins: a plea for help outranks a question, a proposal outranks a complaint.
_KIND_CUES: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("求助", re.compile(r"求助|求求|救救|帮帮|走投无路|急需|没办法了|实在没辙|求你们|求有关部门|"
                      r"(?:赶紧|尽快|马上)(?:派人|来人|处理)|派人(?:来|上门)|能找谁帮忙|救命")),
    ("建议", re.compile(r"建议|提议|提个意见|能否增设|可否增设|希望增设|希望能增加|希望能开通")),
    ("咨询", re.compile(r"请问|咨询|想问|想了解|问一下|问问|怎么办理|如何办理|需要什么材料|什么条件|"
                      r"能不能办|可不可以办|有没有政策|是否可以|是否能")),
)
_COMPLAINT = re.compile(r"投诉|举报|反映|不作为|太过分|气死|忍无可忍|没人管|有没有人管|不管不问|拖欠|欠薪")
# A leading clause that only greets or introduces the writer ("尊敬的领导：", "我是3栋的居民，").
_GREETING = re.compile(
    r"尊敬的.{0,12}|.{0,8}(?:领导|同志|工作人员|书记|主任|市长|区长)们?(?:您好|你们好|好)?|您好|你好|喂|大家好|"
    r"我是.{0,30}(?:居民|业主|村民|家属|老人|职工|患者|家长|租户|住户|市民|老党员)")
_LEAD_CLAUSE = re.compile(r"[^，,。！？!?；;：:\n]+[，,。！？!?；;：:\n]*")
_SENTENCE = re.compile(r"[^。！？!?；;\n]+[。！？!?；;\n]*")
_CLAUSE = re.compile(r"[^，,、]+[，,、]*")


def request_kind(text: str) -> str:
    complaint = bool(_COMPLAINT.search(text))
    for kind, cue in _KIND_CUES:
        if cue.search(text) and not (kind == "咨询" and complaint):
            return kind
    return "投诉"


def summarise(text: str, limit: int = SUMMARY_CHARS) -> str:
    """The first sentences after greetings and self-introductions, cut at `limit` characters:
    what a resident's long message is about, for one SMS segment and the read-back."""
    body = re.sub(r"\s+", "", text)
    start = 0
    for clause in _LEAD_CLAUSE.finditer(body):
        if not _GREETING.fullmatch(clause.group().rstrip("，,。！？!?；;：:\n")):
            break
        start = clause.end()
    body = body[start:] or body
    summary = ""
    for sentence in _SENTENCE.findall(body):
        if len(summary) + len(sentence) > limit:
            if not summary:  # one long sentence: whole clauses while they fit
                for clause in _CLAUSE.findall(sentence):
                    if len(summary) + len(clause) > limit - 1:
                        break
                    summary += clause
                summary = (summary or sentence[: limit - 1]).rstrip("，,、") + "…"
            break
        summary += sentence
    return summary.rstrip("，,、；;。！？!?")


def describe(text: str, normalized: str, area_name: str | None, taxonomy: Taxonomy) -> WorkOrder:
    """The work order for a report: the area the area model ranks first (None without a model),
    then the category by keywords within that area."""
    area = taxonomy.area_by_name.get(area_name or "")
    category = taxonomy.categorise(normalized, within=area)
    if area is None:
        area = taxonomy.area_of(category)
    substantive = bool(category.keywords) or len(normalized) >= 20  # names a problem, or tells one
    return WorkOrder(
        kind=request_kind(normalized),
        area=area.name if area else category.name,
        category=category.name,
        category_code=category.code,
        department=taxonomy.department(category),
        summary=summarise(text),
        substantive=substantive,
        asks_place=area.asks_place if area else True,
    )
