"""What outreach calls and SMS say, in Mandarin (zh) and spoken Cantonese (yue). config.yml
`outreach.texts` / `outreach.texts_yue` override any of them. SMS use the zh wording unless the
resident asked for written Cantonese."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

TEXTS_ZH: dict[str, str] = {
    "checkin_greeting": "{title}您好，这里是社区平安电话。",
    "checkin_ask": "一切平安，请按1，或者说“好”。需要帮忙，请按0，或者说“不好”。",
    "checkin_question": "再问您一件事：{question}是，请按1。不是，请按2。",
    "checkin_ok": "好的，知道您平安，我们就放心了。祝您身体健康，再见。",
    "checkin_help": "好的，马上请社区工作人员联系您。请不要挂机。",
    "checkin_help_no_agent": "好的，社区工作人员会马上给您回电话或者上门。",
    "checkin_unclear": "不好意思，我没听清楚。",
    "checkin_goodbye": "社区工作人员会再联系您。再见。",
    "checkin_sms": "【社区平安】{title}您好，今天平安电话没打通。平安请回复1，需要帮忙请回复0。",
    "checkin_sms_ok": "收到，知道您平安就好。祝您身体健康。",
    "checkin_sms_help": "收到，社区工作人员会尽快联系您。",
    "notice_intro": "这里是社区通知。",
    "notice_menu": "再听一遍，请按9，或者说“再听一遍”。找工作人员，请按0。以后不要再打通知电话，请按8。",
    "notice_bye": "通知说完了，谢谢您，再见。",
    "notice_opted_out": "好的，以后不再给您打通知电话。再见。",
    "notice_sms": "【社区通知】{title}：{body}",
    "no_calls_sms": "好的，以后不再给您打通知电话。短信通知回复TD退订。",
    "call_transfer_later": "工作人员暂时没空，会尽快给您回电话。",
    "callback_intro": "您好，这里是社区服务热线。您刚才找工作人员，现在给您回电话，马上为您接通，请不要挂机。",
    "callback_no_agent": "对不起，工作人员正忙。我们过一会儿再给您打过来。",
}

TEXTS_YUE: dict[str, str] = {
    "checkin_greeting": "{title}你好，呢度系社区平安电话。",
    "checkin_ask": "一切平安，请撳1，或者讲“好”。要帮手，请撳0，或者讲“唔好”。",
    "checkin_question": "再问你一样嘢：{question}系，请撳1。唔系，请撳2。",
    "checkin_ok": "好，知道你平平安安，我哋就放心喇。祝你身体健康，拜拜。",
    "checkin_help": "好，即刻请社区工作人员同你倾。唔好收线住。",
    "checkin_help_no_agent": "好，社区工作人员会即刻打返畀你，或者上门睇你。",
    "checkin_unclear": "唔好意思，我听唔清楚。",
    "checkin_goodbye": "社区工作人员会再揾你。拜拜。",
    "checkin_sms": "【社区平安】{title}你好，今日平安电话打唔通。平安请回复1，要帮手请回复0。",
    "checkin_sms_ok": "收到，知道你平安就好。祝你身体健康。",
    "checkin_sms_help": "收到，社区工作人员会尽快揾你。",
    "notice_intro": "呢度系社区通知。",
    "notice_menu": "想再听一次，请撳9，或者讲“再听一遍”。揾工作人员，请撳0。以后唔想再收到通知电话，请撳8。",
    "notice_bye": "通知讲完喇，多谢你，拜拜。",
    "notice_opted_out": "好，以后唔会再打通知电话畀你。拜拜。",
    "notice_sms": "【社区通知】{title}：{body}",
    "no_calls_sms": "好，以后唔会再打通知电话畀你。短信通知回复TD退订。",
    "call_transfer_later": "工作人员暂时冇空，会尽快打返畀你。",
    "callback_intro": "你好，呢度系社区服务热线。你头先揾工作人员，而家打返畀你，即刻帮你接通，唔好收线住。",
    "callback_no_agent": "唔好意思，工作人员而家好忙。我哋过阵再打返畀你。",
}

# Words a senior may say instead of pressing a key (recognised speech, normalised to these).
YES_WORDS = ("好", "平安", "没事", "没事儿", "都好", "挺好", "很好", "还好", "冇事", "几好", "是", "系", "对", "吃了", "食咗")
PERSON_WORDS = ("不好", "唔好", "不舒服", "唔舒服", "难受", "帮忙", "帮手", "救命", "人工", "工作人员")
NO_WORDS = ("不是", "唔系", "没有", "没吃", "未食", "冇")
FINE_WORDS = ("没事", "冇事", "没问题", "冇问题", "几好", "都好", "挺好", "很好", "还好")  # negation inside, yet "yes"
REPEAT_WORDS = ("再听一遍", "再听一次", "重听", "再讲一次", "再说一遍", "没听清")
STOP_WORDS = ("不要再打", "别再打", "不要打了", "别打了", "唔好再打", "唔使再打", "退订")


class OutreachTexts:
    def __init__(self, config: Mapping[str, Any] | None = None) -> None:
        config = config or {}
        self.by_language = {"zh": {**TEXTS_ZH, **(config.get("texts") or {})},
                            "yue": {**TEXTS_YUE, **(config.get("texts_yue") or {})}}

    def get(self, key: str, language: str = "zh", **values: Any) -> str:
        table = self.by_language.get(language) or self.by_language["zh"]
        return table[key].format(**values)


def heard(text: str, words: tuple[str, ...]) -> bool:
    """Whether a spoken answer contains one of `words`; negations are checked first by callers."""
    cleaned = "".join(ch for ch in text if not ch.isspace() and ch not in "，。！？,.!?")
    return any(word in cleaned for word in words)


def spoken_answer(digits: str, speech: str) -> str | None:
    """"yes" / "no" / "person" / "repeat" / "stop" / None (not understood) from a key or a few
    words. Longer phrases first: "不好" holds "好", "唔好再打" holds "唔好"."""
    if digits:
        return {"1": "yes", "2": "no", "0": "person", "9": "repeat", "8": "stop", "#": "yes"}.get(digits[:1])
    if not speech:
        return None
    for answer, words in (("stop", STOP_WORDS), ("repeat", REPEAT_WORDS), ("person", PERSON_WORDS),
                          ("yes", FINE_WORDS), ("no", NO_WORDS), ("yes", YES_WORDS)):
        if heard(speech, words):
            return answer
    return None
