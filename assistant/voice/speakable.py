"""Text for the ear: what a voice should say, cut into short phrases with pauses between them.

    phrases = for_the_ear("受理编号31852047，请记下来。")
    # [Phrase("受理编号"), Phrase("三幺八五", digits=True), Phrase("二零四七", digits=True), Phrase("请记下来")]

Rules (an older listener writes numbers down while they are said):
- a reference, phone or ID number (3+ digits) is read digit by digit, 幺 for 1, in groups of four
  (a mobile 3-4-4) with a pause between groups: never "三千一百八十五万";
- amounts, counts and dates are read as words: 300元 → 三百元, 11月26日 → 十一月二十六日,
  2026年 → 二零二六年, 8:30 → 八点半, 50% → 百分之五十;
- Latin letters are spelled with their usual Chinese names; emoji and other symbols are skipped;
- a pause after every clause, a longer one after a sentence and the longest after a question;
- no phrase is longer than `MAX_PHRASE_CHARS`, so a very long text still comes out sentence by sentence.
The result is plain Chinese characters, so every engine (Kokoro, espeak-ng, Twilio <Say>) reads it alike.
"""
from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

from assistant.voice.postprocess import int_to_chinese

MAX_PHRASE_CHARS = 24

_PHONE_DIGIT = dict(zip("0123456789Xx", "零幺二三四五六七八九叉叉", strict=True))
_PLAIN_DIGIT = dict(zip("0123456789", "零一二三四五六七八九", strict=True))
# Spelled digits from the dialogue's `*_spoken` renderings ("三幺八五，二零四七"): 一 is not among
# them (it is also a word), so "一位一位地说" stays words.
_SPELLED = "零幺二三四五六七八九叉"
_SPELLED_RUN = re.compile(f"[{_SPELLED}]{{3,}}")
# Units after which a number is an amount or a count, read as a quantity even with 3+ digits.
_QUANTITY_UNITS = "元块角分毛米里斤克岁天年月日时个份位次件条层户人名度秒倍台辆张本瓶盒袋包周步公千万亿"
_ADDRESS_UNITS = "室号楼栋单"
_LETTER_NAMES = dict(zip("ABCDEFGHIJKLMNOPQRSTUVWXYZ", (
    "诶", "比", "西", "迪", "伊", "艾弗", "吉", "艾尺", "艾", "杰", "开", "艾勒", "艾姆", "恩", "欧", "披", "丘",
    "艾儿", "艾丝", "提", "优", "维", "达布留", "艾克斯", "歪", "贼德"), strict=True))
_KNOWN_WORDS = {"SMS": "短信", "OK": "好的", "APP": "应用", "WIFI": "无线网"}

_TIME = re.compile(r"(?<!\d)([01]?\d|2[0-3])[:：]([0-5]\d)(?!\d)")
_DATE = re.compile(r"(?<!\d)(\d{4})[-/.](\d{1,2})[-/.](\d{1,2})(?!\d)")
_DECIMAL = re.compile(r"(?<!\d)(\d+)\.(\d+)(%?)")
_NUMBER = re.compile(r"\d+(?:[ \u00a0]\d+)*[Xx]?")
_LATIN = re.compile(r"[A-Za-z]+")
_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")


@dataclass(frozen=True)
class Pauses:
    """Seconds of silence after each kind of boundary (config.yml voice.tts.pauses)."""

    item: float = 0.15  # 、
    clause: float = 0.25  # ，；：
    sentence: float = 0.5  # 。！
    question: float = 0.8  # ？ — time to think before answering
    digit_group: float = 0.35  # between 3185 and 2047

    @classmethod
    def from_config(cls, section: dict | None) -> Pauses:
        known = cls.__dataclass_fields__
        return cls(**{k: float(v) for k, v in (section or {}).items() if k in known})


@dataclass(frozen=True)
class Phrase:
    text: str  # Chinese characters only (digits already words)
    pause: float = 0.0  # silence after it, seconds
    digits: bool = False  # a digit group, said one syllable at a time


def spell_number(digits: str, phone: bool = True) -> list[str]:
    """'31852047' → ['三幺八五', '二零四七']; a mobile 3-4-4; given spaces ('137 0000 2222') win."""
    groups = digits.split()
    if len(groups) == 1:
        d = groups[0]
        if len(d) == 11 and d.startswith("1"):
            groups = [d[:3], d[3:7], d[7:]]
        elif len(d) == 18:  # ID number: 6 (region) 8 (birth date) 4
            groups = [d[:6], d[6:14], d[14:]]
        else:
            groups = _groups(d)
    table = _PHONE_DIGIT if phone else _PLAIN_DIGIT
    return ["".join(table.get(ch, ch) for ch in g) for g in groups if g]


def _groups(digits: str) -> list[str]:
    """Hotline 12345 in one breath; 6–7 digits 3+3 / 3+4; longer in fours, never a lone last digit."""
    n = len(digits)
    if n <= 5:
        return [digits]
    if n <= 7:
        return [digits[:3], digits[3:]]
    groups = [digits[i : i + 4] for i in range(0, n, 4)]
    if len(groups[-1]) == 1:
        tail = groups[-2] + groups[-1]
        groups[-2:] = [tail[:3], tail[3:]]
    return groups


def _time_words(m: re.Match[str]) -> str:
    hour, minute = int(m.group(1)), int(m.group(2))
    tail = "" if minute == 0 else "半" if minute == 30 else f"{int_to_chinese(minute)}分"
    return f"{int_to_chinese(hour)}点{tail}"


def _date_words(m: re.Match[str]) -> str:
    year = "".join(_PLAIN_DIGIT[d] for d in m.group(1))
    return f"{year}年{int_to_chinese(int(m.group(2)))}月{int_to_chinese(int(m.group(3)))}日"


def _decimal_words(m: re.Match[str]) -> str:
    said = int_to_chinese(int(m.group(1))) + "点" + "".join(_PLAIN_DIGIT[d] for d in m.group(2))
    return "百分之" + said if m.group(3) else said


def _letters(m: re.Match[str]) -> str:
    word = m.group().upper()
    if word in _KNOWN_WORDS:
        return _KNOWN_WORDS[word]
    return "".join(_LETTER_NAMES[ch] for ch in word)


# Private-use marks keep a spelled number apart from words until the text is cut into phrases.
_DIGITS_OPEN, _DIGITS_CLOSE = "\ue000", "\ue001"


def _number(m: re.Match[str], text: str) -> str:
    digits = m.group().replace("\u00a0", " ")
    after = text[m.end() : m.end() + 1]
    plain = digits.replace(" ", "")
    check_char = plain.endswith(("X", "x"))
    if after == "%" and not check_char:
        return "百分之" + int_to_chinese(int(plain))
    if len(plain) < 3 and not check_char:
        return int_to_chinese(int(plain))  # 12月, 3栋, 26号
    if after == "年" and len(plain) == 4:
        return "".join(_PLAIN_DIGIT[d] for d in plain)  # 二零二六年
    if after and after in _ADDRESS_UNITS and len(plain) <= 4 and not check_char:
        return "".join(_PLAIN_DIGIT[d] for d in plain)  # 501室 → 五零一室, inside the words
    if after and after in _QUANTITY_UNITS and len(plain) <= 8 and plain[0] != "0" and not check_char:
        return int_to_chinese(int(plain))  # 300元, 120岁
    return "".join(f"{_DIGITS_OPEN}{g}{_DIGITS_CLOSE}" for g in spell_number(digits))


def _spelled_run(m: re.Match[str]) -> str:
    return f"{_DIGITS_OPEN}{m.group()}{_DIGITS_CLOSE}"


_BOUNDARY = re.compile(r"([，,、；;：:。.！!？?…\n]+|[（）()\[\]【】])")


def _pause_for(mark: str, pauses: Pauses) -> float:
    if any(ch in "？?" for ch in mark):
        return pauses.question
    if any(ch in "。.！!…\n" for ch in mark):
        return pauses.sentence
    if mark and all(ch == "、" for ch in mark):
        return pauses.item
    return pauses.clause


def clean(text: str) -> str:
    """Unicode the voices can take: NFKC, no lone surrogates or control characters, no emoji/symbols."""
    text = text.encode("utf-8", "ignore").decode("utf-8") if _has_surrogate(text) else text
    text = unicodedata.normalize("NFKC", text)
    kept = []
    for ch in text:
        cat = unicodedata.category(ch)
        if cat[0] in "LN" or ch in "，,、；;：:。.！!？?…()（）[]【】%:- \n" or ch in (_DIGITS_OPEN, _DIGITS_CLOSE):
            kept.append(ch)
        elif cat == "Zs":
            kept.append(" ")
        # emoji, symbols, quotes, control characters: skipped (a quote mark has no sound)
    return "".join(kept)


def _has_surrogate(text: str) -> bool:
    return any("\ud800" <= ch <= "\udfff" for ch in text)


def normalise(text: str) -> str:
    """Numbers, letters and symbols rewritten as words; digit groups marked (see `for_the_ear`)."""
    text = _SPELLED_RUN.sub(_spelled_run, clean(text))  # before numbers: 2026年 → 二零二六年 stays words
    text = _DATE.sub(_date_words, text)
    text = _TIME.sub(_time_words, text)
    text = _DECIMAL.sub(_decimal_words, text)
    text = _NUMBER.sub(lambda m: _number(m, text), text)
    text = _LATIN.sub(_letters, text)
    return text.replace("%", "")


def for_the_ear(text: str, pauses: Pauses | None = None) -> list[Phrase]:
    """The phrases a voice says for `text`, in order, each with the pause that follows it."""
    pauses = pauses or Pauses()
    phrases: list[Phrase] = []
    for piece, mark in _pieces(normalise(text)):
        pause = _pause_for(mark, pauses) if mark else 0.0
        parts = re.split(f"({_DIGITS_OPEN}[^{_DIGITS_CLOSE}]*{_DIGITS_CLOSE})", piece)
        chunks: list[Phrase] = []
        for part in parts:
            if part.startswith(_DIGITS_OPEN):
                chunks.append(Phrase(part.strip(_DIGITS_OPEN + _DIGITS_CLOSE), pauses.digit_group, digits=True))
            else:
                words = _speakable_words(part)
                chunks.extend(Phrase(w, pauses.clause) for w in _cut_long(words))
        if chunks:
            chunks[-1] = Phrase(chunks[-1].text, pause, chunks[-1].digits)
            phrases.extend(chunks)
    if phrases:
        phrases[-1] = Phrase(phrases[-1].text, 0.0, phrases[-1].digits)
    return [p for p in phrases if p.text]


def spoken_text(phrases: list[Phrase]) -> str:
    """What the phrases say, as one line with Chinese punctuation (logs, tts-eval references, <Say>)."""
    out = []
    for p in phrases:
        out.append(p.text)
        if p.pause >= Pauses().question:
            out.append("？")
        elif p.pause >= Pauses().sentence:
            out.append("。")
        elif p.pause > 0:
            out.append("，")
    return "".join(out)


def _pieces(text: str) -> list[tuple[str, str]]:
    """(text, boundary mark after it) pairs."""
    tokens = _BOUNDARY.split(text)
    pairs = []
    for i in range(0, len(tokens), 2):
        piece = tokens[i]
        mark = tokens[i + 1] if i + 1 < len(tokens) else ""
        if mark in "（）()[]【】" and mark:
            mark = "，"  # brackets are a short pause: 明天（11月26日，周四）
        if piece.strip():
            pairs.append((piece.strip(), mark))
        elif pairs and mark:
            prev, prev_mark = pairs[-1]
            pairs[-1] = (prev, prev_mark + mark)
    return pairs


def _speakable_words(part: str) -> str:
    """Characters a Chinese voice can say; spaces between Chinese words are dropped."""
    kept = "".join(ch for ch in part if _CJK.match(ch) or ch.isspace())
    return re.sub(r"\s+", " ", kept).strip().replace(" ", "")


def _cut_long(words: str) -> list[str]:
    if len(words) <= MAX_PHRASE_CHARS:
        return [words] if words else []
    import jieba  # a long clause is cut between words, not inside one

    chunks, current = [], ""
    for word in jieba.lcut(words):
        if current and len(current) + len(word) > MAX_PHRASE_CHARS:
            chunks.append(current)
            current = ""
        while len(word) > MAX_PHRASE_CHARS:
            chunks.append(word[:MAX_PHRASE_CHARS])
            word = word[MAX_PHRASE_CHARS:]
        current += word
    if current:
        chunks.append(current)
    return chunks


_SENTENCE_END = re.compile(r"(?<=[。！？!?…])")


def split_sentences(text: str) -> list[str]:
    """'好的。受理编号31852047，请记下来。' → ['好的。', '受理编号31852047，请记下来。'] (empty parts dropped):
    the units a channel can play one after another while the next is being synthesised."""
    return [s for s in (part.strip() for part in _SENTENCE_END.split(text)) if s]
