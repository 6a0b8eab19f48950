"""Rule-based entities on normalised text (as produced by the normaliser: punctuation → spaces)."""
from __future__ import annotations

from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from assistant.nlu.entities import extract_entities, extract_name
from assistant.nlu.idcard import check_digit
from assistant.types import Entity

# A Wednesday morning in Shanghai.
NOW = datetime(2026, 11, 25, 10, 0, tzinfo=ZoneInfo("Asia/Shanghai"))
SPOKEN = dict(zip("0123456789X", ["零", "幺", "二", "三", "四", "五", "六", "七", "八", "九", "叉"], strict=True))
PLAIN_SPOKEN = {**SPOKEN, "1": "一"}


def make_id(region: str = "110101", birth: str = "19450302", seq: str = "001") -> str:
    first17 = region + birth + seq
    return first17 + check_digit(first17)


def speak(digits: str, table: dict[str, str] = SPOKEN) -> str:
    return "".join(table[d] for d in digits)


def wrong_check(number: str) -> str:
    return number[:-1] + ("0" if number[-1] != "0" else "1")


VALID_ID = make_id()  # 1945-03-02, male
FEMALE_ID = "11010519491231002X"  # the GB 11643-1999 example
BRIEF_FIRST17 = "11010119450302001"  # "身份证号是一一零一零一一九四五零三零二零零一叉"


def of(text: str, kind: str) -> list[Entity]:
    return [e for e in extract_entities(text, NOW) if e.entity == kind]


def one(text: str, kind: str) -> Entity:
    found = of(text, kind)
    assert len(found) == 1, (text, extract_entities(text, NOW))
    return found[0]


# ---------------------------------------------------------------- id_number

ID_CASES: list[tuple[str, str, str, dict[str, Any]]] = [
    # text, value, span text, meta subset
    (f"身份证号是{VALID_ID}", VALID_ID, VALID_ID, {"valid": True, "birth_date": "1945-03-02", "gender": "male"}),
    (f"身份证号是{speak(VALID_ID)}", VALID_ID, speak(VALID_ID), {"valid": True}),
    (f"我的身份证 {speak(VALID_ID, PLAIN_SPOKEN)}", VALID_ID, speak(VALID_ID, PLAIN_SPOKEN), {"valid": True}),
    ("身份证号是一一零一零五一九四九一二三一零零二叉", FEMALE_ID, "一一零一零五一九四九一二三一零零二叉",
     {"valid": True, "birth_date": "1949-12-31", "gender": "female"}),
    ("证件号 11010519491231002x", FEMALE_ID, "11010519491231002x", {"valid": True}),
    (f"号码 {VALID_ID[:6]} {VALID_ID[6:14]} {VALID_ID[14:]}", VALID_ID,
     f"{VALID_ID[:6]} {VALID_ID[6:14]} {VALID_ID[14:]}", {"valid": True}),
    (f"身份证{wrong_check(VALID_ID)}", wrong_check(VALID_ID), wrong_check(VALID_ID),
     {"valid": False, "reason": "checksum", "birth_date": "1945-03-02"}),
    (f"身份证{make_id(birth='19450230')}", make_id(birth="19450230"), make_id(birth="19450230"),
     {"valid": False, "reason": "birth_date", "birth_date": None}),
    (f"{VALID_ID[:17]}", VALID_ID[:17], VALID_ID[:17], {"valid": False, "reason": "length"}),
    (f"身份证是{VALID_ID}1", VALID_ID + "1", VALID_ID + "1", {"valid": False, "reason": "length"}),
    ("身份证号110101450302001", "110101450302001", "110101450302001", {"valid": False, "reason": "length"}),
    (f"身份证 {speak(VALID_ID[:16])}", VALID_ID[:16], speak(VALID_ID[:16]), {"valid": False, "reason": "length"}),
    ("身份证号是11010119400101", "11010119400101", "11010119400101", {"valid": False, "reason": "length"}),
]  # fmt: skip


@pytest.mark.parametrize(("text", "value", "span", "meta"), ID_CASES)
def test_id_number(text: str, value: str, span: str, meta: dict[str, Any]) -> None:
    entity = one(text, "id_number")
    assert entity.value == value
    assert entity.text == span
    assert {k: entity.meta[k] for k in meta} == meta
    assert not of(text, "phone")


def test_id_from_the_brief_is_read_and_checked() -> None:
    # The example digits do not end in X for real, so the check character must be flagged.
    entity = one("身份证号是一一零一零一一九四五零三零二零零一叉", "id_number")
    assert entity.value == BRIEF_FIRST17 + "X"
    assert check_digit(BRIEF_FIRST17) != "X"
    assert entity.meta["reason"] == "checksum"
    fixed = "身份证号是" + speak(BRIEF_FIRST17 + check_digit(BRIEF_FIRST17), PLAIN_SPOKEN)
    assert one(fixed, "id_number").meta["valid"] is True


@pytest.mark.parametrize(
    "text",
    [
        "1101011945030200",  # 16 digits, no ID word: could be a bank card
        "银行卡号 6222021234567890123",  # 19 digits on a card
        "1380013800013800",
        "11010119400101",  # 14 digits and nothing says it is an ID
    ],
)
def test_no_id_and_no_phone_for_unexplained_long_runs(text: str) -> None:
    assert not of(text, "id_number")
    assert not of(text, "phone")


# ---------------------------------------------------------------- phone

PHONE_CASES = [
    ("我的手机是幺三九 幺二三四 五六七八", "13912345678", "幺三九 幺二三四 五六七八", "mobile"),
    ("电话13800138000", "13800138000", "13800138000", "mobile"),
    ("打138 0013 8000找我", "13800138000", "138 0013 8000", "mobile"),
    ("138-0013-8000", "13800138000", "138-0013-8000", "mobile"),
    ("+86 138 0013 8000", "13800138000", "+86 138 0013 8000", "mobile"),
    ("86-13800138000", "13800138000", "86-13800138000", "mobile"),
    ("一三八零零一三八零零零", "13800138000", "一三八零零一三八零零零", "mobile"),
    ("幺三八洞洞幺三八洞洞洞", "13800138000", "幺三八洞洞幺三八洞洞洞", "mobile"),
    ("女儿电话 幺五九 八七六五 四三二幺 谢谢", "15987654321", "幺五九 八七六五 四三二幺", "mobile"),
    ("座机010-62345678", "01062345678", "010-62345678", "landline"),
    ("0571-87654321", "057187654321", "0571-87654321", "landline"),
    ("家里电话 零二一 六四三二 一二三四", "02164321234", "零二一 六四三二 一二三四", "landline"),
]


@pytest.mark.parametrize(("text", "value", "span", "kind"), PHONE_CASES)
def test_phone(text: str, value: str, span: str, kind: str) -> None:
    entity = one(text, "phone")
    assert (entity.value, entity.text, entity.meta["kind"]) == (value, span, kind)


def test_landline_area_code_in_meta() -> None:
    assert one("0571-87654321", "phone").meta["area_code"] == "0571"


@pytest.mark.parametrize(
    ("text", "others"),
    [
        ("13800138000 两份", {"quantity"}),  # punctuation became a space: 两 is not a 12th digit
        ("两份 13800138000", {"quantity"}),
        ("幺三八零零幺三八零零零三号送", set()),  # 三号 glued on without a pause
    ],
)
def test_phone_next_to_other_numbers(text: str, others: set[str]) -> None:
    assert one(text, "phone").value == "13800138000"
    assert {e.entity for e in extract_entities(text, NOW)} - {"phone"} == others


def test_mobile_after_id_word_is_still_a_phone() -> None:
    assert one("身份证号是13800138000", "phone").value == "13800138000"


@pytest.mark.parametrize("text", ["12345678901", "1380013800", "电话是 138 0013", "02012345"])
def test_not_a_phone(text: str) -> None:
    assert not of(text, "phone")


# ---------------------------------------------------------------- reference

REFERENCE_CASES = [
    ("编号12345678", "12345678", "12345678", 0.9),
    ("受理号是 2026 1125", "20261125", "2026 1125", 0.9),
    ("单号幺二三四五六七八", "12345678", "幺二三四五六七八", 0.9),
    ("号码是八七六五四三二一", "87654321", "八七六五四三二一", 0.9),
    ("我的受理号是 一二三四 五六七八 查一下", "12345678", "一二三四 五六七八", 0.9),
    ("编号:20261125", "20261125", "20261125", 0.9),
    ("查一下 87654321 的进度", "87654321", "87654321", 0.7),
    ("12345678", "12345678", "12345678", 0.7),
]


@pytest.mark.parametrize(("text", "value", "span", "confidence"), REFERENCE_CASES)
def test_reference(text: str, value: str, span: str, confidence: float) -> None:
    entity = one(text, "reference")
    assert (entity.value, entity.text, entity.confidence) == (value, span, confidence)
    assert not of(text, "phone") and not of(text, "id_number")


@pytest.mark.parametrize("text", ["编号1234567", "编号123456789", "2026-11-25", "13800138000", "二零二六年十二月三号"])
def test_not_a_reference(text: str) -> None:
    assert not of(text, "reference")


# ---------------------------------------------------------------- date

DATE_CASES = [
    ("今天", "2026-11-25", "今天", None),
    ("今儿个去", "2026-11-25", "今儿个", None),
    ("今日", "2026-11-25", "今日", None),
    ("明天", "2026-11-26", "明天", None),
    ("明儿来", "2026-11-26", "明儿", None),
    ("明早来", "2026-11-26", "明早", "morning"),
    ("明天中午送饭", "2026-11-26", "明天", "noon"),
    ("明天下午三点", "2026-11-26", "明天", "afternoon"),
    ("今晚", "2026-11-25", "今晚", "evening"),
    ("后天", "2026-11-27", "后天", None),
    ("大后天", "2026-11-28", "大后天", None),
    # Weekdays: today is Wednesday 2026-11-25.
    ("周五", "2026-11-27", "周五", None),
    ("星期五晚上", "2026-11-27", "星期五", "evening"),
    ("礼拜五", "2026-11-27", "礼拜五", None),
    ("星期三", "2026-12-02", "星期三", None),  # a bare weekday is never today
    ("礼拜天", "2026-11-29", "礼拜天", None),
    ("这周五", "2026-11-27", "这周五", None),
    ("本周五", "2026-11-27", "本周五", None),
    ("这周一", "2026-11-23", "这周一", None),  # this week's Monday, already past
    ("这个星期三", "2026-11-25", "这个星期三", None),
    ("下周三", "2026-12-02", "下周三", None),
    ("下星期三", "2026-12-02", "下星期三", None),
    ("下礼拜三上午", "2026-12-02", "下礼拜三", "morning"),
    ("下个礼拜一", "2026-11-30", "下个礼拜一", None),
    ("下礼拜天", "2026-12-06", "下礼拜天", None),
    ("下下周一", "2026-12-07", "下下周一", None),
    # Months and days.
    ("下个月5号", "2026-12-05", "下个月5号", None),
    ("下月五号", "2026-12-05", "下月五号", None),
    ("这个月28号", "2026-11-28", "这个月28号", None),
    ("12月3号", "2026-12-03", "12月3号", None),
    ("12月3日", "2026-12-03", "12月3日", None),
    ("十二月三号", "2026-12-03", "十二月三号", None),
    ("三月五号", "2027-03-05", "三月五号", None),  # already past this year
    ("明年1月2号", "2027-01-02", "明年1月2号", None),
    ("3号", "2026-12-03", "3号", None),  # past this month
    ("28号", "2026-11-28", "28号", None),
    ("二十五号", "2026-11-25", "二十五号", None),  # today is not past
    ("31号", "2026-12-31", "31号", None),  # November has no 31st
    ("2026-12-03", "2026-12-03", "2026-12-03", None),
    ("2026/12/03", "2026-12-03", "2026/12/03", None),
    ("2026年12月3日", "2026-12-03", "2026年12月3日", None),
    ("二零二六年十二月三号", "2026-12-03", "二零二六年十二月三号", None),
]


@pytest.mark.parametrize(("text", "value", "span", "part"), DATE_CASES)
def test_date(text: str, value: str, span: str, part: str | None) -> None:
    entity = one(text, "date")
    assert (entity.value, entity.text, entity.meta["part_of_day"]) == (value, span, part)


@pytest.mark.parametrize(
    "text",
    [
        "二十八号楼",
        "3号窗口",
        "中山路3号",
        "坐一号线",
        "一周三次",
        "我今年八十二了",
        "一日三餐",
        "2月30号",
        "星期几",
    ],
)
def test_not_a_date(text: str) -> None:
    assert not of(text, "date")


def test_naive_now_and_other_timezones_resolve_to_china_today() -> None:
    utc_late = datetime(2026, 11, 24, 20, 0, tzinfo=ZoneInfo("UTC"))  # 04:00 on the 25th in Shanghai
    assert extract_entities("明天", utc_late)[0].value == "2026-11-26"
    assert extract_entities("明天", datetime(2026, 11, 25, 10, 0))[0].value == "2026-11-26"


# ---------------------------------------------------------------- time

TIME_CASES = [
    ("下午三点", "15:00", "下午三点", "afternoon"),
    ("三点半", "03:30", "三点半", None),
    ("下午三点半来", "15:30", "下午三点半", "afternoon"),
    ("上午十点一刻", "10:15", "上午十点一刻", "morning"),
    ("15:30", "15:30", "15:30", None),
    ("下午3:30", "15:30", "下午3:30", "afternoon"),
    ("晚上7点", "19:00", "晚上7点", "evening"),
    ("中午十二点", "12:00", "中午十二点", "noon"),
    ("中午一点", "13:00", "中午一点", "noon"),
    ("八点十分", "08:10", "八点十分", None),
    ("三点零五分", "03:05", "三点零五分", None),
    ("两点三刻", "02:45", "两点三刻", None),
    ("晚上十二点", "00:00", "晚上十二点", "evening"),
    ("凌晨两点", "02:00", "凌晨两点", "morning"),
    ("早8点", "08:00", "早8点", "morning"),
    ("明晚七点", "19:00", "七点", "evening"),  # part of day carried by 明晚
    ("三点钟", "03:00", "三点钟", None),
    ("一点钟", "01:00", "一点钟", None),
    ("明天一点", "01:00", "一点", None),
    ("星期三三点", "03:00", "三点", None),
]


@pytest.mark.parametrize(("text", "value", "span", "part"), TIME_CASES)
def test_time(text: str, value: str, span: str, part: str | None) -> None:
    entity = one(text, "time")
    assert (entity.value, entity.text, entity.meta["part_of_day"]) == (value, span, part)


@pytest.mark.parametrize("text", ["说慢一点", "大声一点儿", "有一点", "早一点来", "三点五", "25点", "12:60", "几点"])
def test_not_a_time(text: str) -> None:
    assert not of(text, "time")


def test_three_oclock_is_a_time_not_a_quantity() -> None:
    assert [e.entity for e in extract_entities("三点", NOW)] == ["time"]


# ---------------------------------------------------------------- meal_time

MEAL_CASES = [
    ("我要订早饭", "breakfast", "早饭"),
    ("早餐送到家", "breakfast", "早餐"),
    ("早上要", "breakfast", "早上"),
    ("中午的", "lunch", "中午"),
    ("午饭两份", "lunch", "午饭"),
    ("订午餐", "lunch", "午餐"),
    ("中饭", "lunch", "中饭"),
    ("晌午那顿", "lunch", "晌午"),
    ("晚饭", "dinner", "晚饭"),
    ("晚餐", "dinner", "晚餐"),
    ("吃夜饭", "dinner", "夜饭"),
    ("晚上的", "dinner", "晚上"),
]


@pytest.mark.parametrize(("text", "value", "span"), MEAL_CASES)
def test_meal_time(text: str, value: str, span: str) -> None:
    entity = one(text, "meal_time")
    assert (entity.value, entity.text) == (value, span)


def test_part_of_day_inside_a_time_is_not_a_meal() -> None:
    assert not of("晚上7点", "meal_time")


# ---------------------------------------------------------------- quantity

QUANTITY_CASES = [
    ("要两份", 2, "两份", "份"),
    ("3份", 3, "3份", "份"),
    ("就一个人", 1, "一个人", "人"),
    ("我们两位", 2, "两位", "位"),
    ("二份饭", 2, "二份", "份"),
    ("十个人吃", 10, "十个人", "人"),
    ("三十份", 30, "三十份", "份"),
    ("家里两口人", 2, "两口人", "人"),
    ("来5碗", 5, "5碗", "碗"),
]


@pytest.mark.parametrize(("text", "value", "span", "unit"), QUANTITY_CASES)
def test_quantity(text: str, value: int, span: str, unit: str) -> None:
    entity = one(text, "quantity")
    assert (entity.value, entity.text, entity.meta["unit"]) == (value, span, unit)


def test_two_quantities() -> None:
    assert [e.value for e in of("一人一份", "quantity")] == [1, 1]


@pytest.mark.parametrize("text", ["三点", "两个月", "一个星期", "三个小时", "第一个", "3号", "3栋", "二十八号楼", "一级"])
def test_not_a_quantity(text: str) -> None:
    assert not of(text, "quantity")


# ---------------------------------------------------------------- address, community

ADDRESS_CASES: list[tuple[str, str, str, dict[str, str | None]]] = [
    ("3栋2单元501", "3栋2单元501室", "3栋2单元501", {"building": "3", "unit": "2", "room": "501"}),
    ("三号楼二单元五零一", "3栋2单元501室", "三号楼二单元五零一", {"building": "3", "unit": "2", "room": "501"}),
    ("5幢1门302室", "5栋1单元302室", "5幢1门302室", {"building": "5", "unit": "1", "room": "302"}),
    ("12号楼302", "12栋302室", "12号楼302", {"building": "12", "unit": None, "room": "302"}),
    ("在2单元", "2单元", "2单元", {"building": None, "unit": "2", "room": None}),
    ("二十八号楼", "28栋", "二十八号楼", {"building": "28", "unit": None, "room": None}),
    ("幸福小区3栋2单元501", "幸福小区3栋2单元501室", "幸福小区3栋2单元501",
     {"community": "幸福小区", "building": "3", "unit": "2", "room": "501"}),
    ("我住在阳光花园小区的12号楼 3单元 五零二", "阳光花园小区12栋3单元502室", "阳光花园小区的12号楼 3单元 五零二",
     {"community": "阳光花园小区", "building": "12", "room": "502"}),
    ("我家在和平里3号楼", "和平里3栋", "和平里3号楼", {"community": "和平里"}),
    ("A座1203", "A栋1203室", "A座1203", {"building": "A", "room": "1203"}),
    ("五百零一室", "501室", "五百零一室", {"building": None, "room": "501"}),
    ("三号楼2单元 下午三点", "3栋2单元", "三号楼2单元", {"room": None}),
    # The head before the community (a sub-district, road or town) stays in the address.
    ("翠香街道康宁社区3栋2单元501", "翠香街道康宁社区3栋2单元501室", "翠香街道康宁社区3栋2单元501",
     {"street": "翠香街道", "community": "康宁社区", "building": "3", "unit": "2", "room": "501"}),
    ("我住在建设路幸福小区5号楼1单元302室", "建设路幸福小区5栋1单元302室", "建设路幸福小区5号楼1单元302室",
     {"street": "建设路", "community": "幸福小区"}),
    ("解放大道幸福小区2栋", "解放大道幸福小区2栋", "解放大道幸福小区2栋", {"street": "解放大道", "community": "幸福小区"}),
    ("在城关镇和平新村4栋", "城关镇和平新村4栋", "城关镇和平新村4栋", {"street": "城关镇", "community": "和平新村"}),
]  # fmt: skip


@pytest.mark.parametrize(("text", "value", "span", "meta"), ADDRESS_CASES)
def test_address(text: str, value: str, span: str, meta: dict[str, str | None]) -> None:
    entity = one(text, "address")
    assert (entity.value, entity.text) == (value, span)
    assert {k: entity.meta[k] for k in meta} == meta
    assert not of(text, "community")


COMMUNITY_CASES = [
    ("我住在幸福小区", "幸福小区"),
    ("东方红新村", "东方红新村"),
    ("我住阳光花园小区", "阳光花园小区"),
    ("金色家园", "金色家园"),
    ("我家在和平里", "和平里"),
    ("嘉禾苑那边", "嘉禾苑"),
    ("中关村社区", "中关村社区"),
    ("我是朝阳区幸福小区的", "幸福小区"),
    ("那个绿地公寓", "绿地公寓"),
    ("翠香街道康宁社区", "康宁社区"),
]


@pytest.mark.parametrize(("text", "value"), COMMUNITY_CASES)
def test_community(text: str, value: str) -> None:
    entity = one(text, "community")
    assert entity.value == entity.text == value
    assert not of(text, "address")


@pytest.mark.parametrize("text", ["我住家里", "在医院里", "走三公里", "这里", "我们社区", "3门", "夜里三点"])
def test_not_an_address(text: str) -> None:
    assert not of(text, "address") and not of(text, "community")


# ---------------------------------------------------------------- disability_level

DISABILITY_CASES = [
    ("一级", 1),
    ("我是二级残疾", 2),
    ("残疾证三级", 3),
    ("肢体四级", 4),
    ("1级", 1),
    ("视力2级残疾", 2),
    ("听力 3级", 3),
    ("评的是4级", 4),
]


@pytest.mark.parametrize(("text", "value"), DISABILITY_CASES)
def test_disability_level(text: str, value: int) -> None:
    assert one(text, "disability_level").value == value


@pytest.mark.parametrize("text", ["三级医院", "五级", "十二级", "14级"])
def test_not_a_disability_level(text: str) -> None:
    assert not of(text, "disability_level")


# ---------------------------------------------------------------- whole utterances, invariants


def test_mixed_utterance() -> None:
    text = "我是幸福小区3栋2单元501的 电话幺三九一二三四五六七八 明天中午要两份饭"
    found = [(e.entity, e.value) for e in extract_entities(text, NOW)]
    assert found == [
        ("address", "幸福小区3栋2单元501室"),
        ("phone", "13912345678"),
        ("date", "2026-11-26"),
        ("meal_time", "lunch"),
        ("quantity", 2),
    ]


@pytest.mark.parametrize("text", ["我今年八十二了", "你好", "我想问一下", "", "   "])
def test_nothing_to_extract(text: str) -> None:
    assert extract_entities(text, NOW) == []


ALL_TEXTS = sorted(
    {c[0] for c in ID_CASES + PHONE_CASES + REFERENCE_CASES + DATE_CASES + TIME_CASES}
    | {c[0] for c in MEAL_CASES + QUANTITY_CASES + ADDRESS_CASES + COMMUNITY_CASES + DISABILITY_CASES}
)


def check_invariants(text: str, entities: list[Entity]) -> None:
    for e in entities:
        assert 0 <= e.start < e.end <= len(text)
        assert text[e.start : e.end] == e.text
        assert e.extractor == "rules"
    for a, b in zip(entities, entities[1:], strict=False):
        assert a.end <= b.start  # sorted and non-overlapping


@pytest.mark.parametrize("text", ALL_TEXTS)
def test_offsets_and_no_overlaps(text: str) -> None:
    check_invariants(text, extract_entities(text, NOW))


@given(st.text(alphabet="0123456789٣一二两三四五六七八九十百零幺洞叉xX号月日点半份个人位级栋楼单元室周星期下明今天早晚上午小区里 -:.", max_size=40))
def test_never_crashes_on_number_soup(text: str) -> None:
    check_invariants(text, extract_entities(text, NOW))


# ---------------------------------------------------------------- extract_name

NAME_CASES = [
    ("张三", "张三"),
    ("我叫张三", "张三"),
    ("嗯 我叫李秀英啊", "李秀英"),
    ("嗯，我叫李秀英啊。", "李秀英"),
    ("我的名字叫王建国", "王建国"),
    ("名字是欧阳娜娜", "欧阳娜娜"),
    ("姓名 赵四", "赵四"),
    ("喂 那个 我是刘德华呀", "刘德华"),
    ("我姓张 叫张建国", "张建国"),
    ("陈红。", "陈红"),
    ("叫王芳哈", "王芳"),
    ("买买提·艾力", "买买提·艾力"),
    ("我叫买买提 艾力", "买买提·艾力"),  # the normaliser turned · into a space
    ("张 建国", "张建国"),
]


@pytest.mark.parametrize(("text", "name"), NAME_CASES)
def test_extract_name(text: str, name: str) -> None:
    assert extract_name(text) == name


@pytest.mark.parametrize(
    "text",
    [
        "",
        "不知道",
        "转人工",
        "取消",
        "我叫张三123",
        "不对",
        "你说什么",
        "张",
        "我叫阿卜杜热合曼买买提",  # 11 Han characters without a dot
        "好的",
        "我的电话是13800138000",
        "嗯 啊",
    ],
)
def test_extract_name_rejects(text: str) -> None:
    assert extract_name(text) is None
