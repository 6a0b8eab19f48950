"""GB 11643-1999 resident ID numbers."""
from __future__ import annotations

from datetime import date

import pytest
from hypothesis import given
from hypothesis import strategies as st

from assistant.nlu.idcard import IdCheck, age_on, check_digit, validate_id

TODAY = date(2026, 11, 25)


def make_id(region: str = "110101", birth: str = "19450302", seq: str = "001") -> str:
    first17 = region + birth + seq
    return first17 + check_digit(first17)


@pytest.mark.parametrize(
    ("first17", "expected"),
    [
        # The two worked examples printed in GB 11643-1999.
        ("11010519491231002", "X"),
        ("44052418800101001", "4"),
    ],
)
def test_check_digit_standard_examples(first17: str, expected: str) -> None:
    assert check_digit(first17) == expected


@pytest.mark.parametrize("bad", ["", "1234", "1101051949123100", "110105194912310021", "1101051949123100X"])
def test_check_digit_needs_17_digits(bad: str) -> None:
    with pytest.raises(ValueError):
        check_digit(bad)


def test_valid_standard_example() -> None:
    assert validate_id("11010519491231002X", TODAY) == IdCheck(
        "11010519491231002X", True, None, date(1949, 12, 31), "female"
    )


def test_lowercase_x_is_uppercased() -> None:
    check = validate_id("11010519491231002x", TODAY)
    assert check.valid and check.number == "11010519491231002X"


@pytest.mark.parametrize(
    ("number", "reason"),
    [
        (make_id()[:-1], "length"),
        (make_id() + "1", "length"),
        ("", "length"),
        ("110101194503020" + "X01", "format"),  # a letter inside, only possible via direct calls
        ("0" + make_id()[1:17] + check_digit("0" + make_id()[1:17]), "region"),
        ("9" + make_id()[1:17] + check_digit("9" + make_id()[1:17]), "region"),
        (make_id(birth="19450230"), "birth_date"),  # no 30 February
        (make_id(birth="19451301"), "birth_date"),
        (make_id(birth="20261126"), "birth_date"),  # tomorrow: not born yet
        (make_id(birth="18951125"), "birth_date"),  # 131 years old
        (make_id()[:-1] + ("0" if make_id()[-1] != "0" else "1"), "checksum"),
    ],
)
def test_invalid_reasons(number: str, reason: str) -> None:
    check = validate_id(number, TODAY)
    assert not check.valid
    assert check.reason == reason


def test_oldest_allowed_and_born_today() -> None:
    assert validate_id(make_id(birth="18951126"), TODAY).valid  # 130, a day short of 131
    assert validate_id(make_id(birth="20261125"), TODAY).valid


@pytest.mark.parametrize(("seq", "gender"), [("001", "male"), ("002", "female"), ("019", "male"), ("990", "female")])
def test_gender_from_17th_digit(seq: str, gender: str) -> None:
    assert validate_id(make_id(seq=seq), TODAY).gender == gender


def test_checksum_failure_still_reports_birth_date() -> None:
    number = make_id()
    wrong = number[:-1] + ("0" if number[-1] != "0" else "1")
    assert validate_id(wrong, TODAY).birth_date == date(1945, 3, 2)


@pytest.mark.parametrize(
    ("birth", "day", "age"),
    [
        (date(1945, 3, 2), date(2026, 11, 25), 81),
        (date(1945, 11, 25), date(2026, 11, 25), 81),  # birthday today
        (date(1945, 11, 26), date(2026, 11, 25), 80),  # birthday tomorrow
        (date(2000, 2, 29), date(2026, 2, 28), 25),  # leap-day birthday, common year
        (date(2000, 2, 29), date(2026, 3, 1), 26),
        (date(2000, 2, 29), date(2028, 2, 29), 28),
        (date(2026, 11, 25), date(2026, 11, 25), 0),
        (date(1896, 11, 25), date(2026, 11, 25), 130),
    ],
)
def test_age_on(birth: date, day: date, age: int) -> None:
    assert age_on(birth, day) == age


valid_first17 = st.builds(
    lambda first, region, birth, seq: f"{first}{region}{birth:%Y%m%d}{seq}",
    st.sampled_from("12345678"),
    st.text(alphabet="0123456789", min_size=5, max_size=5),
    st.dates(min_value=date(1896, 11, 25), max_value=TODAY),
    st.text(alphabet="0123456789", min_size=3, max_size=3),
)


@given(valid_first17)
def test_generated_ids_validate(first17: str) -> None:
    check = validate_id(first17 + check_digit(first17), TODAY)
    assert check.valid, check
    assert check.birth_date is not None and check.birth_date.strftime("%Y%m%d") == first17[6:14]


@given(valid_first17, st.integers(min_value=0, max_value=17), st.data())
def test_any_single_change_invalidates(first17: str, pos: int, data: st.DataObject) -> None:
    number = first17 + check_digit(first17)
    alphabet = "0123456789X" if pos == 17 else "0123456789"
    new = data.draw(st.sampled_from([c for c in alphabet if c != number[pos]]))
    changed = number[:pos] + new + number[pos + 1 :]
    check = validate_id(changed, TODAY)
    assert not check.valid
    if pos == 0 and new in "09":
        assert check.reason == "region"
    elif 6 <= pos < 14:
        assert check.reason in ("birth_date", "checksum")
    else:
        assert check.reason == "checksum"
