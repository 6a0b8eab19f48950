"""Every sentence the assistant can say: from domain.yml and ivr_flows/*.yml, never from code.

- `fixed_phrases(...)`: the texts to render ahead of time (first start, `python -m assistant
  tts-warm`). A template's text between its {placeholders} is rendered clause by clause, so a
  read-back ("我核对一下：办老年证，{name}，…") only synthesises the name and numbers per turn.
- `sample_prompts(...)`: every response and flow prompt filled with typical values (a name, a phone
  and reference number, a date), as a caller would hear them: what `tts-eval` and the
  intelligibility benchmark speak.
"""
from __future__ import annotations

import re
import string
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import yaml

from assistant.dialogue.domain import Domain, fill

# Values as the dialogue renders them for the ear (engine.py: phone and reference digit by digit,
# ID by its last four, dates in words).
SAMPLE_VALUES: dict[str, str] = {
    "name": "张秀兰", "id_number": "尾号零零幺四", "phone": "幺三七，零零零零，二二二二",
    "parent_phone": "幺三九，幺二三四，五六七八", "address": "康宁社区3栋2单元501室", "purpose": "孩子上学",
    "disability_level": "二级", "date": "明天（11月26日，周四）", "meal_time": "午餐", "quantity": "2",
    "meal_mode": "送餐到", "service_type": "打扫卫生", "hospital": "市人民医院", "time": "上午八点",
    "description": "路灯坏了", "location": "康宁社区3栋", "relation": "女儿", "reference": "31852047",
    "reference_spoken": "三幺八五，二零四七", "title": "老年证申请", "old": "订饭", "min_age": "60", "age": "58",
    "days": "7", "max": "5", "digits": "15", "choices": "姓名、电话", "category": "老年证", "status": "处理中",
    "count": "2", "hotline": "12345", "how_to_ask": "请老人用自己的手机发短信同意。", "text": "我想订饭",
    "summary": "服务编号31852047，正在办老年证。",
}  # fmt: skip

_FIELD = string.Formatter()
_CLAUSE_MARK = "，,、；;：:。.！!？?"


@dataclass(frozen=True)
class Prompt:
    source: str  # "domain:utter_greet:text", "flow:main:steps.main"
    text: str


# Responses only ever read, never heard: the SMS hints and the terminal's labels.
_WRITTEN_ONLY = ("utter_sms_", "utter_terminal_")


def _templates(domain: Domain) -> list[tuple[str, str]]:
    out = []
    for name, variants in domain.responses.items():
        if name.startswith(_WRITTEN_ONLY):
            continue
        for i, variant in enumerate(variants):
            for kind in ("text", "speech", "slow"):
                template = getattr(variant, kind)
                if template:
                    out.append((f"domain:{name}:{i}:{kind}", template))
    return out


def _flow_templates(flow_paths: Iterable[Path]) -> list[tuple[str, str]]:
    out = []
    for path in flow_paths:
        doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        flow = doc.get("flow", path.stem)
        if doc.get("greeting"):
            out.append((f"flow:{flow}:greeting", doc["greeting"]))
        for step, spec in (doc.get("steps") or {}).items():
            if spec.get("prompt"):
                out.append((f"flow:{flow}:steps.{step}", spec["prompt"]))
        for key, text in (doc.get("messages") or {}).items():
            out.append((f"flow:{flow}:messages.{key}", text))
        hint = (doc.get("conversation") or {}).get("hint")
        if hint:
            out.append((f"flow:{flow}:conversation.hint", hint))
    return out


def all_templates(domain: Domain, flow_paths: Iterable[Path]) -> list[tuple[str, str]]:
    return _templates(domain) + _flow_templates(flow_paths)


def sample_prompts(domain: Domain, flow_paths: Iterable[Path]) -> list[Prompt]:
    """Every template filled with SAMPLE_VALUES, de-duplicated, in file order."""
    seen: set[str] = set()
    prompts = []
    for source, template in all_templates(domain, flow_paths):
        text = fill(template, SAMPLE_VALUES).strip()
        if text and text not in seen:
            seen.add(text)
            prompts.append(Prompt(source, text))
    return prompts


def fixed_pieces(template: str) -> list[str]:
    """The parts of a template that never change, cut where a clause ends: "已提交。受理编号{reference}，
    请记下来。" → ["已提交。", "请记下来。"] ("受理编号31852047" is one phrase at run time, so "受理编号"
    alone would never be asked for)."""
    pieces: list[str] = []
    text_parts: list[str] = []
    for literal, field_name, _spec, _conv in _FIELD.parse(template):
        text_parts.append(literal)
        if field_name is not None:
            text_parts.append("\0")  # a placeholder
    joined = "".join(text_parts)
    for i, piece in enumerate(joined.split("\0")):
        if not piece.strip():
            continue
        if i > 0:  # after a placeholder: the first clause continues the value
            cut = _first_boundary(piece)
            piece = piece[cut:] if cut is not None else ""
        if i < joined.count("\0"):  # before a placeholder: the last clause runs into the value
            cut = _last_boundary(piece)
            piece = piece[: cut + 1] if cut is not None else ""
        if piece.strip(_CLAUSE_MARK + " "):
            pieces.append(piece.strip())
    return pieces


def _first_boundary(text: str) -> int | None:
    m = re.search(f"[{re.escape(_CLAUSE_MARK)}]", text)
    return m.end() if m else None


def _last_boundary(text: str) -> int | None:
    for i in range(len(text) - 1, -1, -1):
        if text[i] in _CLAUSE_MARK:
            return i
    return None


def fixed_phrases(domain: Domain, flow_paths: Iterable[Path]) -> list[str]:
    """Texts to render ahead of time: whole prompts without placeholders, fixed pieces of the rest,
    and the labels a template may insert (form titles, statuses)."""
    out: list[str] = []
    for _source, template in all_templates(domain, flow_paths):
        out.extend(fixed_pieces(template))
    for table in domain.labels.values():
        out.extend(str(v) for v in table.values())
    return list(dict.fromkeys(t for t in out if t.strip()))


def load_prompts(root: Path) -> tuple[Domain, list[Path]]:
    """The deployment's domain.yml and Mandarin flows (what the Mandarin voice speaks). Another
    language's wording (main.yue.yml, domain.yue.yml) is said by that language's voice, never by
    this one: neither rendered ahead nor scored as Mandarin."""
    flows = [path for path in sorted((root / "ivr_flows").glob("*.yml")) if "." not in path.stem]
    return Domain.load(root / "domain.yml"), flows
