"""Places in a resident's words ("阳光小区3号楼楼下", "建设路口") → a public place, grid and point.

The gazetteer is configuration (config.yml `gazetteer`): communities and roads with their grid
and a representative point, which is what duplicate detection measures distance from when the
photo has no GPS. Room numbers are kept out of `place`, which is public (Open311).
"""
from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from assistant.nlu.numerals import chinese_to_int

_NUM = r"(\d{1,4}|[零〇一二两三四五六七八九十百]{1,5})"
_BUILDING_RE = re.compile(_NUM + r"\s*(号楼|栋|幢|座|号院)")
_UNIT_RE = re.compile(_NUM + r"\s*单元")
_GENERIC_PLACE_RE = re.compile(r"([\u4e00-\u9fff]{2,8}(?:小区|花园|家园|新村|公寓|大院|里|苑))")
_ROAD_RE = re.compile(r"([\u4e00-\u9fff]{1,6}(?:路|街|大道|胡同|巷))")


@dataclass(frozen=True)
class Place:
    name: str
    kind: str  # community / road
    grid: str | None
    lat: float | None
    lon: float | None
    aliases: tuple[str, ...] = ()


@dataclass(frozen=True)
class Location:
    place: str  # public and coarse: 小区 + 楼, or road
    grid: str | None
    lat: float | None
    lon: float | None
    detail: str  # what the resident wrote (may hold a room number): stored encrypted


@dataclass(frozen=True)
class ServiceArea:
    min_lat: float
    max_lat: float
    min_lon: float
    max_lon: float

    def contains(self, lat: float, lon: float) -> bool:
        return self.min_lat <= lat <= self.max_lat and self.min_lon <= lon <= self.max_lon

    @classmethod
    def from_config(cls, data: Mapping[str, Any] | None) -> ServiceArea | None:
        if not data:
            return None
        return cls(float(data["min_lat"]), float(data["max_lat"]), float(data["min_lon"]), float(data["max_lon"]))


def distance_m(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance (haversine) in metres."""
    r = 6_371_000.0
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * r * math.asin(math.sqrt(a))


def _number(text: str) -> str:
    if text.isdigit():
        return str(int(text))
    value = chinese_to_int(text)
    return str(value) if value is not None else text


class Gazetteer:
    def __init__(self, places: Sequence[Place]) -> None:
        # Longest names first, so 幸福里小区 wins over 幸福里.
        self._names = sorted(
            ((alias, p) for p in places for alias in (p.name, *p.aliases)), key=lambda t: -len(t[0])
        )
        self.places = tuple(places)

    @classmethod
    def from_config(cls, data: Mapping[str, Any] | None) -> Gazetteer:
        places: list[Place] = []
        for kind, key in (("community", "communities"), ("road", "roads")):
            for item in (data or {}).get(key) or []:
                places.append(Place(str(item["name"]), kind, item.get("grid"), item.get("lat"), item.get("lon"),
                                    tuple(item.get("aliases") or ())))
        return cls(places)

    def nearest(self, lat: float, lon: float, within_m: float = 800.0) -> Place | None:
        best = min(
            ((distance_m(lat, lon, p.lat, p.lon), p) for p in self.places if p.lat is not None and p.lon is not None),
            default=None, key=lambda t: t[0],
        )
        return best[1] if best and best[0] <= within_m else None

    def parse(self, text: str) -> Location | None:
        """A location when the text names a known place, or at least a 小区/路 and a building."""
        text = unicodedata.normalize("NFKC", text or "")
        if not text.strip():
            return None
        known = next(((alias, p) for alias, p in self._names if alias in text), None)
        building = _BUILDING_RE.search(text)
        unit = _UNIT_RE.search(text)
        parts: list[str] = []
        place: Place | None = None
        if known:
            place = known[1]
            parts.append(place.name)
        else:
            generic = _GENERIC_PLACE_RE.search(text) or _ROAD_RE.search(text)
            if generic is None:
                return None  # "3号楼" alone could be anywhere: ask which 小区
            parts.append(generic.group(1))
        if building:
            parts.append(f"{_number(building.group(1))}{'号楼' if building.group(2) in ('号楼', '栋', '幢') else building.group(2)}")
        if unit:
            parts.append(f"{_number(unit.group(1))}单元")
        return Location(
            place="".join(parts)[:120],
            grid=place.grid if place else None,
            lat=place.lat if place else None,
            lon=place.lon if place else None,
            detail=text.strip()[:200],
        )
