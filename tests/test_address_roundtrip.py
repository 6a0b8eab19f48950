"""Property tests: addresses built from gazetteer parts (config.yml's communities and roads, and
generated sub-districts, roads, towns and communities) come back whole from the extractor.

Every part said must be in the entity: the head (街道/路/镇), the community with its suffix
(小区/社区/花园 …), building, unit and room — and nothing cut inside a place name."""
from __future__ import annotations

from pathlib import Path

import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from assistant.nlu.entities import extract_entities
from assistant.nlu.normalize import Lexicon, Normalizer
from tests.test_entities import NOW

ROOT = Path(__file__).resolve().parent.parent
GAZETTEER = yaml.safe_load((ROOT / "config.yml").read_text(encoding="utf-8"))["gazetteer"]
CONFIG_COMMUNITIES = [c["name"] for c in GAZETTEER["communities"]]
CONFIG_ROADS = [r["name"] for r in GAZETTEER["roads"]]
# Characters of real place names (园 and 苑 too, as in 桂园新村; no numeral or function character).
NAME_CHARS = "阳光幸福和平康宁翠香金桂锦绣东西南北兴盛丰泰安景明德春晓红旗朝晖长青丽星龙腾育才向荣松柏园苑"
HEADS = ("街道", "路", "镇", "大道")
SUFFIXES = ("小区", "社区", "花园", "新村", "家园", "公寓")
CN = "零一二三四五六七八九"

# Distinct characters: the normaliser folds a stutter ("东东东" → "东东"), which no place name has.
name = st.text(alphabet=NAME_CHARS, min_size=2, max_size=3).filter(lambda n: len(set(n)) == len(n))
head = st.one_of(st.sampled_from(CONFIG_ROADS), st.builds(str.__add__, name, st.sampled_from(HEADS)))
community = st.one_of(st.sampled_from(CONFIG_COMMUNITIES), st.builds(str.__add__, name, st.sampled_from(SUFFIXES)))


def chinese(n: int) -> str:
    """12 → 十二, 3 → 三, 20 → 二十 (how a resident says a building or unit number)."""
    tens, ones = divmod(n, 10)
    return ("" if tens == 0 else ("十" if tens == 1 else CN[tens] + "十")) + ("" if ones == 0 and tens else CN[ones])


@st.composite
def addresses(draw: st.DrawFn) -> tuple[str, dict[str, str | None]]:
    street = draw(st.one_of(st.none(), head))
    place = draw(community)
    building, unit, room = draw(st.integers(1, 40)), draw(st.integers(1, 9)), draw(st.integers(101, 2808))
    spoken_numbers = draw(st.booleans())
    b = chinese(building) if spoken_numbers else str(building)
    u = chinese(unit) if spoken_numbers else str(unit)
    said = f"{street or ''}{place}{b}{draw(st.sampled_from(('栋', '号楼')))}{u}单元{room}室"
    lead = draw(st.sampled_from(("", "我住在", "地址是", "我家在", "在")))
    tail = draw(st.sampled_from(("", " 楼道灯坏了", " 请派人来看看", "")))
    return lead + said + tail, {"street": street, "community": place, "building": str(building),
                                "unit": str(unit), "room": str(room)}


@settings(max_examples=300, derandomize=True, deadline=None)
@given(addresses())
def test_generated_address_keeps_every_part(case: tuple[str, dict[str, str | None]]) -> None:
    text, parts = case
    found = [e for e in extract_entities(text, NOW) if e.entity == "address"]
    assert len(found) == 1, (text, found)
    meta = found[0].meta
    assert meta.get("street") == parts["street"], (text, meta)
    for key in ("community", "building", "unit", "room"):
        assert meta[key] == parts[key], (text, key, meta)
    expected = f"{parts['street'] or ''}{parts['community']}{parts['building']}栋{parts['unit']}单元{parts['room']}室"
    assert found[0].value == expected


@settings(max_examples=150, derandomize=True, deadline=None)
@given(addresses())
def test_address_survives_the_normaliser(case: tuple[str, dict[str, str | None]]) -> None:
    """What the pipeline sees is normalised text (t2s, fillers, lexicon): the parts still come back."""
    text, parts = case
    normalized = NORMALIZER(text)
    found = [e for e in extract_entities(normalized, NOW) if e.entity == "address"]
    assert len(found) == 1, (text, normalized, found)
    assert found[0].meta.get("street") == parts["street"] and found[0].meta["community"] == parts["community"]


NORMALIZER = Normalizer(Lexicon.load(ROOT / "lexicon" / "normalization.yml", ROOT / "lexicon" / "domain_dict.txt"))
