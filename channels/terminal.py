"""Terminal channel: `python -m assistant chat` and `python -m assistant call`, the same core and
the same call flow for staff training and demos. What the terminal itself prints around the
conversation (help, speaker labels) is in domain.yml (`utter_terminal_*`), picked by name."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, TextIO, TypeVar

from assistant.dialogue.domain import Domain
from assistant.ivr import CallInput
from assistant.types import Reply, UserMessage
from channels.phone_call import CHANNEL as CALL_CHANNEL
from channels.phone_call import PhoneCall
from channels.runtime_port import ChannelRuntime

NAME = "terminal"
KEYS = "0123456789*#"
# The terminal's own lines; refused at start if domain.yml lacks one.
TERMINAL_RESPONSES = ("utter_terminal_chat_help", "utter_terminal_restarted", "utter_terminal_assistant",
                      "utter_terminal_you", "utter_terminal_handoff", "utter_terminal_urgent",
                      "utter_terminal_call_help", "utter_terminal_hotline", "utter_terminal_to_person",
                      "utter_terminal_caller")


class TerminalLines:
    """The terminal's own lines, rendered by name from domain.yml."""

    def __init__(self, domain: Domain) -> None:
        domain.require({name: "printed by the terminal channel" for name in TERMINAL_RESPONSES})
        self.domain = domain

    def __call__(self, name: str, **values: Any) -> str:
        return self.domain.render(f"utter_terminal_{name}", values).text


def _show(reply: Reply, out: TextIO, line: TerminalLines) -> None:
    out.write(line("assistant", text=reply.text) + "\n")
    if reply.buttons:
        out.write("      " + "  ".join(f"[{b.title}]" for b in reply.buttons) + "\n")
    if reply.handoff:
        out.write("      " + line("handoff", urgent=line("urgent") if reply.urgent else "") + "\n")


def run_chat(runtime: ChannelRuntime, stdin: TextIO, stdout: TextIO, sender: str = "terminal",
             phone: str | None = None) -> None:
    assistant = runtime.assistant
    line = TerminalLines(runtime.domain)
    stdout.write(line("chat_help") + "\n")
    buttons: dict[str, str] = {}
    while True:
        stdout.write(line("you"))
        stdout.flush()
        said = stdin.readline()
        if not said:
            break
        text = said.strip()
        if text == "/quit":
            break
        if text == "/restart":
            assistant.reset(NAME, sender)
            stdout.write(line("restarted") + "\n")
            continue
        text = buttons.get(text, text)  # typing a button's title presses it
        turn = assistant.turn(UserMessage(sender_id=sender, text=text, channel=NAME, phone=phone))
        buttons = {b.title: b.payload for r in turn.replies for b in r.buttons}
        for reply in turn.replies:
            _show(reply, stdout, line)
        if turn.ended:
            break


class _Step(Protocol):
    """What both kinds of call say and do next (phone_call.CallStep, outreach's CallScript)."""

    say: tuple[str, ...]
    next: str


S = TypeVar("S", bound=_Step)


def _play(step: S, heard: Callable[[S, CallInput], S], stdin: TextIO, stdout: TextIO, line: TerminalLines) -> None:
    """Says each step, reads the caller's keys (digits, *, #) or words, until the call ends."""
    while True:
        stdout.write(line("hotline", text="".join(step.say)) + "\n")
        if step.next == "person":
            stdout.write(line("to_person") + "\n")
        if step.next != "listen":
            return
        stdout.write(line("caller"))
        stdout.flush()
        said = stdin.readline()
        if not said or said.strip() == "/hangup":
            return
        text = said.strip()
        is_keys = bool(text) and all(ch in KEYS for ch in text)
        step = heard(step, CallInput(digits=text if is_keys else "", speech="" if is_keys else text))


def run_call(runtime: ChannelRuntime, stdin: TextIO, stdout: TextIO, caller: str | None = None,
             sender: str = "CAterminal0001", language: str | None = None) -> None:
    """`python -m assistant call`: a phone call in the terminal, for staff training. Type keys
    (digits, *, #; a long number ends with #) or words as the caller would say them."""
    phone = PhoneCall(runtime, runtime.ivr_flow)
    line = TerminalLines(runtime.domain)
    runtime.assistant.reset(CALL_CHANNEL, sender)
    stdout.write(line("call_help") + "\n")
    _play(phone.greet(sender, caller, language),
          lambda step, value: phone.heard(sender, caller, step.step or "main", step.expects, step.tries, value),
          stdin, stdout, line)
    runtime.calls.end(sender, "completed")


def run_checkin_call(runtime: ChannelRuntime, household: str, stdin: TextIO, stdout: TextIO,
                     language: str | None = None) -> None:
    """`python -m assistant call --checkin H001`: today's 平安电话 of one household, played in the
    terminal (type 1 / 0 / 9 or the words the senior would say)."""
    outreach = runtime.outreach
    call_id, sid = outreach.checkins.terminal_call(household, language)
    _play(outreach.answer(call_id, "start"),
          lambda script, value: outreach.answer(call_id, script.step or "ask", value.digits, value.speech,
                                                script.tries),
          stdin, stdout, TerminalLines(runtime.domain))
    outreach.calls.on_status(call_id, sid, "completed")
