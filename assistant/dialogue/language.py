"""Which language a conversation is spoken in: Mandarin ("zh", the default) or Cantonese ("yue").

A resident asks for it ("讲广东话", "讲普通话"), or a stored preference sets it at the start (the
`LanguagePreferences` port), or Cantonese words in what they say (佢, 咗, 嘅, 唔, 係 …) make the
assistant ask once, "您想用广东话吗？". Detection reads the raw text: the NLU's normaliser has already
turned 唔 into 不. On SMS nothing is detected: written Cantonese only when the resident asks for it.
"""
from __future__ import annotations

LANGUAGES = ("zh", "yue")
# Characters written in Cantonese and (almost) never in standard written Chinese.
MARKERS = frozenset("佢咗嘅喺冇啲嘢揾搵畀嚟咁哋嗰乜咩睇係唔噉嘞㗎啱攞")
TO_YUE = ("讲广东话", "講廣東話", "说广东话", "用广东话", "讲粤语", "说粤语", "用粤语", "讲白话", "讲广州话",
          "广东话", "粤语")
TO_ZH = ("讲普通话", "說普通話", "说普通话", "用普通话", "讲国语", "普通话", "国语")
YES = frozenset({"係", "系", "好", "要", "想", "得", "是", "对", "啱", "可以", "好的", "係嘅", "当然", "想要", "是的"})
PARTICLES = "呀啊吖啦喇嘞哦噢吧呢嘅"
NO = ("唔使", "不用", "唔要", "不要", "唔想", "不想", "唔好", "不是", "唔系")


def requested(text: str) -> str | None:
    """An explicit switch: "yue", "zh" or None. Short texts only: a long message that mentions
    普通话 in passing is a request about something else."""
    cleaned = "".join(ch for ch in text if ch.isalnum())
    if not cleaned or len(cleaned) > 12:
        return None
    if any(word in cleaned for word in TO_ZH):
        return "zh"
    if any(word in cleaned for word in TO_YUE):
        return "yue"
    return None


def sounds_cantonese(text: str) -> bool:
    return sum(ch in MARKERS for ch in text) >= 1


def answer(text: str, intent: str) -> bool | None:
    """The answer to "您想用广东话吗？": True, False, or None (not an answer: something else)."""
    cleaned = "".join(ch for ch in text if ch.isalnum())
    if intent == "deny" or any(word in cleaned for word in NO) or requested(text) == "zh":
        return False
    if intent == "affirm" or cleaned.rstrip(PARTICLES) in YES or requested(text) == "yue":
        return True
    return None
