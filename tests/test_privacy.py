"""Masking helpers for display and logs."""
from __future__ import annotations

import io
import logging
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from assistant.privacy import MaskingFilter, mask_id, mask_name, mask_phone, mask_text


def test_mask_id() -> None:
    assert mask_id("110101194503020012") == "110***********0012"
    assert mask_id("11010119450302001X") == "110***********001X"


@pytest.mark.parametrize("phone", ["13800138000", "+8613800138000", "138 0013 8000", "86-13800138000"])
def test_mask_phone(phone: str) -> None:
    assert mask_phone(phone) == "138****8000"


@pytest.mark.parametrize(
    ("name", "masked"),
    [("张三华", "张*华"), ("张三", "张*"), ("欧阳娜娜", "欧**娜"), ("张", "*"), ("", "")],
)
def test_mask_name(name: str, masked: str) -> None:
    assert mask_name(name) == masked


def test_mask_text_masks_ids_and_mobiles_in_sentences() -> None:
    text = "我叫张三，身份证110101194503020012，电话13800138000，老伴电话+86 13912345678。"
    out = mask_text(text)
    assert out == "我叫张三，身份证110***********0012，电话138****8000，老伴电话+86 139****5678。"


@pytest.mark.parametrize(
    "text",
    [
        "订单号 213800138000123",  # longer digit runs are not phones
        "固话 010-12345678",
        "12345678901",  # not a mobile prefix
        "reference 10234567",
    ],
)
def test_mask_text_leaves_other_numbers(text: str) -> None:
    assert mask_text(text) == text


_MOBILE = st.from_regex(r"\A1[3-9][0-9]{9}\Z")
_ID = st.from_regex(r"\A[0-9]{17}[0-9X]\Z")
_FILLER = st.text(alphabet="我的电话是号码，。 abc", min_size=1, max_size=8)


@given(parts=st.lists(st.tuples(_FILLER, st.one_of(_MOBILE, _ID)), min_size=1, max_size=4))
@settings(max_examples=200, deadline=None)
def test_mask_text_never_leaks(parts: list[tuple[str, str]]) -> None:
    text = "".join(f + n for f, n in parts) + "。"
    out = mask_text(text)
    for _, number in parts:
        assert number not in out
    assert not re.search(r"1[3-9]\d{9}", out)


def test_masking_filter_masks_message_and_args() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(MaskingFilter())
    logger = logging.getLogger("test_privacy.filter")
    logger.addHandler(handler)
    logger.propagate = False
    logger.setLevel(logging.INFO)
    try:
        logger.info("sms from %s id=%s n=%d", "13800138000", "110101194503020012", 3)
        logger.info("caller 13912345678 said hi")
        logger.info("bad format %d", "x")  # a broken record is still masked, not dropped
    finally:
        logger.removeHandler(handler)
    out = stream.getvalue()
    assert "sms from 138****8000 id=110***********0012 n=3" in out
    assert "caller 139****5678 said hi" in out
    assert "bad format" in out
    assert "13800138000" not in out and "13912345678" not in out
