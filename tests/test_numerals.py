"""Chinese numerals vs digit-by-digit readings."""
from __future__ import annotations

import cn2an
import pytest
from hypothesis import given
from hypothesis import strategies as st

from assistant.nlu.numerals import chinese_to_int, find_digit_runs, spoken_digits

# Every way a digit is said or written; 幺 (phones), 洞 (radio) and 两 included.
READINGS = {
    "0": "0零〇洞",
    "1": "1一幺",
    "2": "2二两",
    "3": "3三",
    "4": "4四",
    "5": "5五",
    "6": "6六",
    "7": "7七",
    "8": "8八",
    "9": "9九",
}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("零", 0),
        ("〇", 0),
        ("洞", 0),
        ("幺", 1),
        ("两", 2),
        ("十", 10),
        ("十五", 15),
        ("二十八", 28),
        ("八十二", 82),
        ("一百零五", 105),
        ("一百五", 150),
        ("两千", 2000),
        ("三千零五", 3005),
        ("3千5", 3500),
        ("一万二", 12000),
        ("1万2000", 12000),
        ("一千零一十", 1010),
        ("十万", 100_000),
        ("一亿零一万", 100_010_000),
        ("二零二六", 2026),  # no unit: read digit by digit
        ("12", 12),
        (" 二十 ", 20),
    ],
)
def test_chinese_to_int(text: str, expected: int) -> None:
    assert chinese_to_int(text) == expected


@pytest.mark.parametrize(
    "text",
    ["", "   ", "abc", "百", "万", "十十", "二三十", "十五六", "三点", "一百万万", "3.5", "-5", "五个"],
)
def test_chinese_to_int_rejects(text: str) -> None:
    assert chinese_to_int(text) is None


@given(st.integers(min_value=0, max_value=10**12 - 1))
def test_int_to_chinese_round_trip(n: int) -> None:
    assert chinese_to_int(cn2an.an2cn(n)) == n


@given(st.integers(min_value=0, max_value=10**12 - 1))
def test_liang_before_units_reads_as_two(n: int) -> None:
    spoken = cn2an.an2cn(n)
    for unit in "百千万亿":
        spoken = spoken.replace("二" + unit, "两" + unit)
    assert chinese_to_int(spoken) == n


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("幺三八 零零幺三 八零零零", "13800138000"),
        ("13800138000", "13800138000"),
        ("138-0013-8000", "13800138000"),
        ("138,0013,8000", "13800138000"),
        ("一三九.一二三四.五六七八", "13912345678"),
        ("幺三8 0013 八零零零", "13800138000"),
        ("洞洞幺", "001"),
        ("两两", "22"),
        ("〇五七一、八七六五", "05718765"),
        ("11010519491231002x", "11010519491231002X"),
        ("一一零一零五一九四九一二三一零零二叉", "11010519491231002X"),
        ("  五零一  ", "501"),
    ],
)
def test_spoken_digits(text: str, expected: str) -> None:
    assert spoken_digits(text) == expected


@pytest.mark.parametrize(
    "text",
    ["", "十五", "二十八", "一百零五", "12a", "1x2", "叉", "x12", "-12", "12-", "138 0013 好", "三点"],
)
def test_spoken_digits_rejects(text: str) -> None:
    assert spoken_digits(text) is None


def _render(digits: str, data: st.DataObject) -> str:
    parts = []
    for i, d in enumerate(digits):
        if i:
            parts.append(data.draw(st.sampled_from(["", "", " ", "-", ",", ".", "、", "  "])))
        parts.append(data.draw(st.sampled_from(READINGS[d])))
    return "".join(parts)


@given(st.text(alphabet="0123456789", min_size=1, max_size=20), st.data())
def test_spoken_rendering_round_trip(digits: str, data: st.DataObject) -> None:
    spoken = _render(digits, data)
    assert spoken_digits(spoken) == digits
    text = f"号码是{spoken}谢谢"
    assert find_digit_runs(text) == [(3, 3 + len(spoken), digits)]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("我的手机是幺三九 幺二三四 五六七八", [("幺三九 幺二三四 五六七八", "13912345678")]),
        ("电话138-0013-8000好吗", [("138-0013-8000", "13800138000")]),
        ("我今年八十二了", []),
        ("二十八号楼", []),
        ("一百零五岁", []),
        ("3千5, 12345", [("12345", "12345")]),
        ("12345x", [("12345", "12345")]),  # too short for an ID check character
        ("身份证11010519491231002X", [("11010519491231002X", "11010519491231002X")]),
        ("3栋2单元501", [("3", "3"), ("2", "2"), ("501", "501")]),
        ("一九四五年出生", [("一九四五", "1945")]),
        ("15:30", [("15", "15"), ("30", "30")]),
    ],
)
def test_find_digit_runs(text: str, expected: list[tuple[str, str]]) -> None:
    runs = find_digit_runs(text)
    assert [(text[s:e], d) for s, e, d in runs] == expected
