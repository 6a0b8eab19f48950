"""Entities of place: an address (community, building, unit, room) and a community named alone."""
from __future__ import annotations

import re

from assistant.nlu.entity_base import CN_NUMERALS, Candidate, candidate
from assistant.nlu.numerals import chinese_to_int, spoken_digits

# ---------------------------------------------------------------- addresses
_ANUM = r"(?:[0-9]{1,4}|[零〇一二两三四五六七八九十百]{1,4})"
_ROOM = r"(?:[0-9]{2,4}|[零〇一二两三四五六七八九十百幺洞]{2,6})"
_ADDR_RE = re.compile(
    rf"(?<![0-9{CN_NUMERALS}百幺洞])"
    rf"(?:(?P<b>{_ANUM}|[A-Za-z])\s*(?:号楼|栋|幢|座|号?楼(?=\s*{_ANUM}\s*(?:单元|门))))?"
    rf"(?:\s*(?P<u>{_ANUM})\s*(?:单元|(?P<gate>门)))?"
    rf"(?:\s*(?P<r>{_ROOM})\s*(?P<rs>室|号|房)?(?![点时份个位人0-9{CN_NUMERALS}]))?"
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
# The head of an address before its community: "翠香街道康宁社区…", "建设路幸福小区…".
_STREET_SUFFIXES = ("街道", "大道", "镇", "路", "街")
_STREET_NAME_MAX = 4
_STREET_BOUNDARY = _NAME_BOUNDARY | set("市区县省道")


def _street_before(text: str, start: int) -> int | None:
    """Where a street, road or town named right before `start` begins, or None."""
    head = text[:start]
    for suffix in _STREET_SUFFIXES:
        if not head.endswith(suffix):
            continue
        end = i = start - len(suffix)
        while i > 0 and end - i < _STREET_NAME_MAX and "\u4e00" <= text[i - 1] <= "\u9fff" \
                and text[i - 1] not in _STREET_BOUNDARY:
            i -= 1
        return i if end - i >= 2 else None
    return None


def _communities(text: str) -> list[tuple[int, int, str]]:
    found: list[tuple[int, int, str]] = []
    pos = 0
    while (m := _COMMUNITY_RE.search(text, pos)) is not None:
        # A rejected or cut match is searched again one character on: in "住在东苑小区" the first
        # match is "住在东"+苑 (too short once cut at 在), the right one "东苑"+小区.
        pos = m.start() + 1
        name, suffix = m.group("name"), m.group("suf")
        cut = max((i + 1 for i, c in enumerate(name) if c in _NAME_BOUNDARY), default=0)
        before = name[cut - 1] if cut else text[m.start() - 1: m.start()]
        if cut < len(name) and before and before in "街大" and name[cut] == "道":
            cut += 1  # "翠香街道康宁社区": 街道 (a sub-district) heads the name, it is not part of it
        elif (at := name.find("大道")) >= 0 and at + 2 < len(name):
            cut = max(cut, at + 2)  # "解放大道幸福小区"
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
        if found and start < found[-1][1]:
            continue  # inside a community already found
        found.append((start, end, text[start:end]))
        pos = end
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


def address_candidates(text: str) -> list[Candidate]:
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
        street = None
        for i, (cs, ce, name) in enumerate(communities):
            join = _ADDR_JOIN_RE.match(text, ce)
            if join and join.end() == start:
                community, start = name, cs
                used.add(i)
                if (head := _street_before(text, cs)) is not None:
                    street, start = text[head:cs], head
        value = "".join(
            (street or "", community or "", f"{building}栋" if building else "", f"{unit}单元" if unit else "",
             f"{room}室" if room else "")
        )  # fmt: skip
        meta = {"community": community, "building": building, "unit": unit, "room": room}
        if street:
            meta["street"] = street
        out.append(candidate("address", value, text, start, end, meta=meta))
    for i, (cs, ce, name) in enumerate(communities):
        if i not in used:
            out.append(candidate("community", name, text, cs, ce))
    return out
