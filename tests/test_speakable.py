"""Text for the ear: numbers digit by digit, amounts and dates as words, pauses, odd characters."""
from __future__ import annotations

import re

from conftest import ROOT
from hypothesis import given, settings
from hypothesis import strategies as st

from assistant.voice.prompts import fixed_phrases, fixed_pieces, load_prompts, sample_prompts
from assistant.voice.speakable import MAX_PHRASE_CHARS, Pauses, for_the_ear, spell_number, split_sentences, spoken_text

HANZI = re.compile(r"^[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]+$")


def said(text: str) -> str:
    return spoken_text(for_the_ear(text))


def test_a_reference_number_is_read_digit_by_digit_never_as_a_quantity():
    phrases = for_the_ear("受理编号31852047，请记下来。")
    assert [p.text for p in phrases] == ["受理编号", "三幺八五", "二零四七", "请记下来"]
    assert [p.digits for p in phrases] == [False, True, True, False]
    assert "万" not in said("受理编号31852047") and "千" not in said("受理编号31852047")


def test_phone_and_id_numbers_are_grouped_as_people_write_them():
    assert spell_number("13700002222") == ["幺三七", "零零零零", "二二二二"]
    assert spell_number("137 0000 2222") == ["幺三七", "零零零零", "二二二二"]
    assert spell_number("11010119450302001X") == ["幺幺零幺零幺", "幺九四五零三零二", "零零幺叉"]
    assert said("请打12345") == "请打，幺二三四五"
    assert said("请马上打120急救电话。") == "请马上打，幺二零，急救电话"


def test_amounts_counts_and_dates_are_read_as_words():
    assert said("两份，12月3号，300元，5个工作日") == "两份，十二月三号，三百元，五个工作日"
    assert said("2026年3月") == "二零二六年三月"
    assert said("2026-11-26") == "二零二六年十一月二十六日"
    assert said("8:30出发，18:05到") == "八点半出发，十八点五分到"
    assert said("涨了50%，1.5公斤") == "涨了百分之五十，一点五公斤"
    assert said("3栋2单元501室") == "三栋二单元五零一室"


def test_spelled_digits_from_the_dialogue_stay_digit_groups_and_words_stay_words():
    phrases = for_the_ear("电话幺三七，零零零零，二二二二。对吗？")
    assert [p.digits for p in phrases] == [False, True, True, True, False]
    assert [p.text for p in for_the_ear("请一位一位地说")] == ["请一位一位地说"]


def test_pauses_after_clauses_sentences_and_questions():
    pauses = Pauses(clause=0.2, sentence=0.5, question=0.9, digit_group=0.3)
    phrases = for_the_ear("好的，我核对一下。对吗？请说对。", pauses)
    assert [p.pause for p in phrases] == [0.2, 0.5, 0.9, 0.0]  # nothing after the last
    digits = for_the_ear("编号31852047，请记下来", pauses)
    assert [p.pause for p in digits] == [0.2, 0.3, 0.2, 0.0]


def test_letters_emoji_rare_characters_and_broken_unicode_are_spoken_or_skipped():
    assert said("SMS") == "短信"
    assert said("ABC") == "诶比西"
    assert said("好😀的") == "好的"
    assert said("\ud800您好") == "您好"  # a lone surrogate (seen on the REST webhook) is dropped
    assert said("Ok，谢谢") == "好的，谢谢"
    assert for_the_ear("😀😀") == []  # nothing sayable: no phrase (the engine says a short silence)


def test_a_long_text_is_cut_into_short_phrases_between_words():
    text = "社区服务中心每周二和周四下午为行动不便的老年人提供免费上门理发和助浴服务欢迎大家预约" * 20
    phrases = for_the_ear(text)
    assert len(phrases) > 20
    assert all(len(p.text) <= MAX_PHRASE_CHARS for p in phrases)
    assert "".join(p.text for p in phrases) == text


def test_sentences_split_where_a_channel_can_play_one_after_another():
    assert split_sentences("好的。受理编号31852047，请记下来。对吗？请说对") == [
        "好的。", "受理编号31852047，请记下来。", "对吗？", "请说对"]


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=80))
def test_any_text_becomes_phrases_of_chinese_characters_only(text):
    for phrase in for_the_ear(text):
        assert phrase.text and HANZI.match(phrase.text), phrase
        assert len(phrase.text) <= MAX_PHRASE_CHARS
        assert phrase.pause >= 0


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet="0123456789", min_size=3, max_size=20))
def test_any_digit_string_is_said_digit_by_digit(digits):
    phrases = for_the_ear(f"编号{digits}。")
    spoken = "".join(p.text for p in phrases if p.digits)
    assert len(spoken) == len(digits)
    assert spoken == digits.translate(str.maketrans("0123456789", "零幺二三四五六七八九"))


def test_every_prompt_of_the_deployment_is_listed_and_fixed_pieces_skip_the_values():
    domain, flows = load_prompts(ROOT)
    prompts = sample_prompts(domain, flows)
    assert len(prompts) > 100
    assert not any("{" in p.text for p in prompts)
    sources = {p.source.split(":")[0] for p in prompts}
    assert sources == {"domain", "flow"}
    # Cantonese wording is said by the Cantonese voice: not rendered or scored as Mandarin.
    assert {p.source.split(":")[1] for p in prompts if p.source.startswith("flow:")} == {"main"}
    assert not any("撳" in p.text or "唔" in p.text for p in prompts)
    assert fixed_pieces("我核对一下：办老年证，{name}，电话{phone}。对吗？") == ["我核对一下：办老年证，", "对吗？"]
    assert fixed_pieces("已提交。受理编号{reference}，请记下来。") == ["已提交。", "请记下来。"]
    fixed = fixed_phrases(domain, flows)
    assert "对吗？" in fixed and not any("{" in t for t in fixed)
