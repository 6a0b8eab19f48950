"""Phone call flows (ivr_flows/*.yml) interpreted without any telephony: keys and speech in,
an `IvrOutcome` out. The Twilio channel renders outcomes as TwiML; `python -m assistant call`
and the tests drive the same navigator directly.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import yaml

OutcomeKind = Literal["menu", "core", "human", "end", "confirm_speech"]


@dataclass(frozen=True)
class MenuStep:
    name: str
    prompt: str
    options: Mapping[str, Mapping[str, str]]  # key → {goto: step} | {intent: name}
    back: str | None = None


# What the phone channels say by name from a flow's `messages:` (silence, retries, read-back of
# speech, hand-over, the agent's whisper …).
REQUIRED_MESSAGES = ("no_input", "not_understood", "confirm_speech", "say_again", "no_agent", "more",
                     "goodbye", "error", "whisper", "whisper_case", "whisper_urgent", "whisper_form",
                     "whisper_unknown")


@dataclass(frozen=True)
class IvrFlow:
    name: str
    start: str
    greeting: str
    steps: Mapping[str, MenuStep]
    keys: Mapping[str, str]  # global keys: "0" → human …
    messages: Mapping[str, str]
    say: Mapping[str, str]
    gather: Mapping[str, Any]
    retries: int
    answers: Mapping[str, Mapping[str, str]]  # core expects → key → payload
    digit_slots: frozenset[str]
    star_in_id_means_x: bool = True
    hint: str = ""
    # Other languages' wording (main.yue.yml next to main.yml): the same flow with its greeting,
    # prompts, hint and messages in that language, by language code.
    translations: Mapping[str, IvrFlow] = field(default_factory=dict)

    def spoken(self, language: str) -> IvrFlow:
        """This flow in `language` (itself for Mandarin or a language it has no wording for)."""
        return self.translations.get(language, self)

    @classmethod
    def load(cls, path: Path) -> IvrFlow:
        flow = cls.parse(yaml.safe_load(path.read_text(encoding="utf-8")), path.stem)
        others = {}
        for other in sorted(path.parent.glob(f"{path.stem}.*{path.suffix}")):
            language = other.name[len(path.stem) + 1:-len(path.suffix)]
            others[language] = flow.reworded(yaml.safe_load(other.read_text(encoding="utf-8")) or {})
        return replace(flow, translations=others)

    def reworded(self, doc: Mapping[str, Any]) -> IvrFlow:
        """The same keys and steps, said in another language's words (what `doc` does not say
        stays as it was)."""
        steps = {name: replace(step, prompt=(doc.get("steps") or {}).get(name, {}).get("prompt") or step.prompt)
                 for name, step in self.steps.items()}
        flow = replace(self, greeting=doc.get("greeting") or self.greeting, steps=steps,
                       messages={**self.messages, **(doc.get("messages") or {})},
                       hint=(doc.get("conversation") or {}).get("hint") or self.hint)
        flow.check()
        return flow

    @classmethod
    def parse(cls, doc: Mapping[str, Any], default_name: str = "main") -> IvrFlow:
        steps = {
            name: MenuStep(name, spec["prompt"], {str(k): v for k, v in spec.get("options", {}).items()},
                           spec.get("back"))
            for name, spec in doc["steps"].items()
        }
        conversation = doc.get("conversation") or {}
        flow = cls(
            name=doc.get("flow", default_name),
            start=doc.get("start", "main"),
            greeting=doc.get("greeting", ""),
            steps=steps,
            keys={str(k): v for k, v in (doc.get("keys") or {}).items()},
            messages=doc.get("messages") or {},
            say=doc.get("say") or {},
            gather=doc.get("gather") or {},
            retries=int(doc.get("retries", 2)),
            answers={k: {str(d): p for d, p in v.items()} for k, v in (conversation.get("answers") or {}).items()},
            digit_slots=frozenset(conversation.get("digit_slots") or ()),
            star_in_id_means_x=bool(conversation.get("star_in_id_means_x", True)),
            hint=conversation.get("hint", ""),
        )
        flow.check()
        return flow

    def check(self) -> None:
        """A flow error should stop the server at start, not a caller in the middle of a call."""
        if self.start not in self.steps:
            raise ValueError(f"start step {self.start!r} is not defined")
        missing = [name for name in REQUIRED_MESSAGES if not self.messages.get(name)]
        if missing:
            raise ValueError(f"flow {self.name!r} lacks messages: {', '.join(missing)} (every one is said on some call)")
        for step in self.steps.values():
            tasks = [k for k in step.options if k not in self.keys]
            if len(tasks) > 4:
                raise ValueError(f"step {step.name!r} has {len(tasks)} task options; at most 4 (ISO/IEC 13714)")
            for key, option in step.options.items():
                if key in self.keys:
                    raise ValueError(f"step {step.name!r} reuses global key {key!r}")
                if "goto" in option and option["goto"] not in self.steps:
                    raise ValueError(f"step {step.name!r} key {key!r} goes to unknown step {option['goto']!r}")
        if "human" not in self.keys.values():
            raise ValueError("some key must reach a person")


@dataclass(frozen=True)
class CallInput:
    digits: str = ""
    speech: str = ""
    confidence: float | None = None

    @property
    def empty(self) -> bool:
        return not self.digits and not self.speech.strip()


@dataclass(frozen=True)
class IvrOutcome:
    kind: OutcomeKind
    step: str | None = None  # menu step to gather next (kind "menu")
    say: tuple[str, ...] = ()  # sentences before the next prompt
    text: str | None = None  # what to hand to the conversational core (kind "core")
    tries: int = 0  # failed attempts so far at this step
    meta: Mapping[str, Any] = field(default_factory=dict)


class IvrNavigator:
    def __init__(self, flow: IvrFlow) -> None:
        self.flow = flow

    def message(self, name: str, **values: Any) -> str:
        return self.flow.messages.get(name, "").format(**values)

    def _failed(self, step: str, tries: int, message: str) -> IvrOutcome:
        if tries + 1 > self.flow.retries:
            return IvrOutcome("human", say=(self.message(message),), meta={"reason": "retries"})
        return IvrOutcome("menu", step=step, say=(self.message(message),), tries=tries + 1)

    def _global_key(self, key: str, step: str) -> IvrOutcome | None:
        action = self.flow.keys.get(key)
        if action == "human":
            return IvrOutcome("human", meta={"reason": "key"})
        if action == "end":
            return IvrOutcome("end")
        if action == "repeat":
            return IvrOutcome("menu", step=step)
        if action == "back":
            return IvrOutcome("menu", step=self.flow.steps[step].back or self.flow.start if step in self.flow.steps
                              else self.flow.start)
        return None

    def _speech(self, value: CallInput, confirmed_step: str) -> IvrOutcome:
        low = float(self.flow.gather.get("low_confidence", 0.0))
        if value.confidence is not None and value.confidence < low:
            return IvrOutcome("confirm_speech", step=confirmed_step, text=value.speech.strip(),
                              say=(self.message("confirm_speech", text=value.speech.strip()),))
        return IvrOutcome("core", text=value.speech.strip())

    def at_menu(self, step: str, value: CallInput, tries: int = 0) -> IvrOutcome:
        """A menu step: keys choose options, speech goes to the core (it understands requests)."""
        step = step if step in self.flow.steps else self.flow.start
        if value.empty:
            return self._failed(step, tries, "no_input")
        if value.digits:
            key = value.digits[:1] if len(value.digits) > 1 and value.digits[:1] in self.flow.keys else value.digits
            special = self._global_key(key, step)
            if special:
                return special
            option = self.flow.steps[step].options.get(key)
            if option is None:
                return self._failed(step, tries, "not_understood")
            if "goto" in option:
                return IvrOutcome("menu", step=option["goto"])
            return IvrOutcome("core", text=f"/{option['intent']}")
        return self._speech(value, step)

    def in_conversation(self, expects: str | None, value: CallInput, tries: int = 0) -> IvrOutcome:
        """The core asked a question; keys answer it where the flow says how."""
        if value.empty:
            if tries + 1 > self.flow.retries:
                return IvrOutcome("human", say=(self.message("no_input"),), meta={"reason": "retries"})
            return IvrOutcome("core", text="", tries=tries + 1, meta={"silence": True})
        if not value.digits:
            return self._speech(value, "conversation")
        digits = value.digits
        if len(digits) == 1 and digits in self.flow.keys:
            action = self.flow.keys[digits]
            answer = self.flow.answers.get(expects or "", {}).get(digits)
            if answer and action not in {"human", "end"}:
                return IvrOutcome("core", text=answer)
            if action == "repeat":
                return IvrOutcome("core", text="/repeat")
            if action == "back":
                return IvrOutcome("core", text="/cancel", meta={"then": "menu"})
            return self._global_key(digits, self.flow.start) or IvrOutcome("core", text=digits)
        answer = self.flow.answers.get(expects or "", {}).get(digits)
        if answer:
            return IvrOutcome("core", text=answer)
        if expects in self.flow.digit_slots:
            keyed = digits.rstrip("#")
            if self.flow.star_in_id_means_x and expects == "id_number" and keyed.endswith("*"):
                keyed = keyed[:-1] + "X"
            return IvrOutcome("core", text=keyed.replace("*", ""))
        return IvrOutcome("core", text=digits)
