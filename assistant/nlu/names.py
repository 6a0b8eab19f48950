"""A person's name in an answer to "您叫什么名字" (form answers only, not a general extractor)."""
from __future__ import annotations

import re

_NAME_FILLERS = ("那个", "嗯", "啊", "喂", "呃", "额", "哦")
_NAME_PREFIXES = (
    "我的名字叫", "我的名字是", "我的名字", "名字叫", "名字是", "姓名是", "姓名叫", "姓名",
    "我叫做", "我叫", "我是", "叫做", "叫",
)  # fmt: skip
_NAME_EDGE = " \t,.!?;:~、。，！？；：…·"
_NAME_TRAILING = "啊呀哈吧呢嘛"
_NAME_REJECT = (
    "不知道", "不对", "取消", "人工", "客服", "不是", "没有", "不要", "不用", "算了", "什么",
    "再说", "重复", "听不清", "没听清", "谢谢", "你好", "您好", "再见", "好的", "是的", "可以", "忘了",
    "我",
)  # fmt: skip
_PLAIN_NAME_RE = re.compile(r"[\u4e00-\u9fff]{2,4}")
_DOTTED_NAME_RE = re.compile(r"[\u4e00-\u9fff]+(?:·[\u4e00-\u9fff]+)+")
_MAX_DOTTED_NAME = 10


def _strip_name(s: str) -> str:
    """Peel fillers, lead-in phrases and trailing particles until nothing changes."""
    while True:
        before = s
        s = s.strip(_NAME_EDGE).rstrip(_NAME_TRAILING)
        for word in _NAME_FILLERS + _NAME_PREFIXES:
            if s.startswith(word):
                s = s[len(word) :]
                break
        if s == before:
            return s


def _plausible_name(s: str) -> bool:
    if any(word in s for word in _NAME_REJECT):
        return False
    if _PLAIN_NAME_RE.fullmatch(s):
        return True
    return len(s) <= _MAX_DOTTED_NAME and _DOTTED_NAME_RE.fullmatch(s) is not None


def _as_name(s: str) -> str | None:
    if " " in s:
        # Normalisation turns "·" into a space: "买买提 艾力"; "张 三" is just a pause.
        joined = s.replace(" ", "")
        s = joined if _PLAIN_NAME_RE.fullmatch(joined) else re.sub(r"\s+", "·", s)
    return s if _plausible_name(s) else None


def extract_name(text: str) -> str | None:
    """The name in an answer to "您叫什么名字" ("嗯，我叫张三啊" -> "张三"), or None."""
    if any(c.isdigit() for c in text):
        return None
    s = _strip_name(re.sub(r"[•・.]", "·", text))
    if "叫" in s:  # "我姓张，叫张建国": the name follows the last 叫
        s = _strip_name(s.rsplit("叫", 1)[1])
    return _as_name(s)
