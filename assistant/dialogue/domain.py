"""Loads domain.yml: responses, slots, forms, labels and emergency keywords."""
from __future__ import annotations

import random
import string
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from assistant.types import Button


@dataclass(frozen=True)
class SlotSpec:
    name: str
    type: str
    label: str
    aliases: tuple[str, ...] = ()
    entity: str | None = None  # for text slots: an entity that fills the slot from any sentence


@dataclass(frozen=True)
class FormSpec:
    name: str
    kind: str  # application | booking | ticket | proxy_request | query
    required_slots: tuple[str, ...]
    min_age: str | None = None  # key into config.yml eligibility
    # slot → {other_slot: value}: the slot is not asked when other_slot has that value
    skip_when: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    # slot → entity: the opening sentence fills the slot when it contains that entity
    start_fills: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ResponseTemplate:
    text: str
    slow: str | None = None
    speech: str | None = None
    buttons: tuple[Button, ...] = ()


@dataclass(frozen=True)
class Rendered:
    text: str
    speech: str
    buttons: tuple[Button, ...] = ()


def _templates(responses: Mapping[str, Any]) -> dict[str, list[ResponseTemplate]]:
    return {
        name: [ResponseTemplate(v["text"], v.get("slow"), v.get("speech"),
                                tuple(Button(b["title"], b["payload"]) for b in v.get("buttons") or ()))
               for v in variants]
        for name, variants in responses.items()
    }


class _Blank(dict):
    def __missing__(self, key: str) -> str:
        return ""


_formatter = string.Formatter()


def fill(template: str, values: Mapping[str, Any]) -> str:
    return _formatter.vformat(template, (), _Blank(values))


class Domain:
    def __init__(self, doc: dict[str, Any]) -> None:
        self.intents: list[str] = list(doc.get("intents") or [])
        self.slots = {
            name: SlotSpec(name, spec["type"], spec.get("label", name), tuple(spec.get("aliases") or ()),
                           spec.get("entity"))
            for name, spec in (doc.get("slots") or {}).items()
        }
        self.forms = {
            name: FormSpec(
                name,
                spec["kind"],
                tuple(spec["required_slots"]),
                spec.get("min_age"),
                spec.get("skip_when") or {},
                spec.get("start_fills") or {},
            )
            for name, spec in (doc.get("forms") or {}).items()
        }
        self.labels: dict[str, dict[Any, str]] = {k: dict(v) for k, v in (doc.get("labels") or {}).items()}
        self.emergency_keywords: dict[str, list[str]] = {
            k: list(v) for k, v in (doc.get("emergency_keywords") or {}).items()
        }
        self.responses = _templates(doc.get("responses") or {})
        # Other languages' wording of the same responses (domain.yue.yml): by language, by name.
        self.translations: dict[str, dict[str, list[ResponseTemplate]]] = {
            language: _templates(responses) for language, responses in (doc.get("translations") or {}).items()}
        for form in self.forms.values():
            for slot in form.required_slots:
                if slot not in self.slots:
                    raise ValueError(f"form {form.name} requires undeclared slot {slot}")

    @classmethod
    def load(cls, path: Path) -> Domain:
        """domain.yml, with each sibling domain.<language>.yml (e.g. domain.yue.yml) as that
        language's wording of the responses."""
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
        for other in sorted(path.parent.glob(f"{path.stem}.*{path.suffix}")):
            language = other.name[len(path.stem) + 1:-len(path.suffix)]
            extra = yaml.safe_load(other.read_text(encoding="utf-8")) or {}
            doc.setdefault("translations", {})[language] = extra.get("responses") or {}
        return cls(doc)

    def require(self, needed: Mapping[str, str]) -> None:
        """Refuses, at start-up, a domain that lacks a response the dialogue will say (a form
        without its read-back would otherwise start, then fail at the confirmation step).
        `needed` maps each response name (or "a|b": either one) to why it is needed."""
        missing = [f"{name} ({why})" for name, why in needed.items()
                   if not any(self.has(option) for option in name.split("|"))]
        if missing:
            raise ValueError("domain.yml is missing responses: " + "; ".join(missing))

    def has(self, name: str) -> bool:
        return name in self.responses

    def label(self, group: str, value: Any) -> str:
        table = self.labels.get(group, {})
        return table.get(value, table.get(str(value), str(value)))

    def render(
        self,
        name: str,
        text_values: Mapping[str, Any] | None = None,
        speech_values: Mapping[str, Any] | None = None,
        slow: bool = False,
        language: str = "zh",
    ) -> Rendered:
        """Fills a response. Text and speech use different renderings of the same values
        (a phone number is grouped for reading, spelt digit by digit for listening). In another
        language, its wording of the response when it has one (else the Mandarin)."""
        base = self.responses.get(name)
        variants = (self.translations.get(language, {}).get(name) if language != "zh" else None) or base
        if not variants:
            raise KeyError(f"no response {name!r} in domain.yml")
        template = random.choice(variants) if len(variants) > 1 else variants[0]
        if not template.buttons and base and base[0].buttons:  # a translation keeps the buttons
            template = ResponseTemplate(template.text, template.slow, template.speech, base[0].buttons)
        text_values = text_values or {}
        speech_values = speech_values if speech_values is not None else text_values
        text = fill(template.slow if slow and template.slow else template.text, text_values)
        if template.speech:
            speech = fill(template.speech, speech_values)
        else:
            speech = fill(template.slow if slow and template.slow else template.text, speech_values)
        return Rendered(text, speech, template.buttons)
