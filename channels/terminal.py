"""Terminal channel: `python -m assistant chat`, the same core for staff training and demos."""
from __future__ import annotations

from typing import TextIO

from assistant.types import Reply, UserMessage

NAME = "terminal"
HELP = "（输入 /quit 退出，/restart 重新开始；按钮可以直接输入按钮上的字）"


def _show(reply: Reply, out: TextIO) -> None:
    out.write(f"助手：{reply.text}\n")
    if reply.buttons:
        out.write("      " + "  ".join(f"[{b.title}]" for b in reply.buttons) + "\n")
    if reply.handoff:
        out.write("      （已转人工" + ("，紧急" if reply.urgent else "") + "）\n")


def run_chat(runtime, stdin: TextIO, stdout: TextIO, sender: str = "terminal", phone: str | None = None) -> None:
    assistant = runtime.assistant
    stdout.write(HELP + "\n")
    buttons: dict[str, str] = {}
    while True:
        stdout.write("您：")
        stdout.flush()
        line = stdin.readline()
        if not line:
            break
        text = line.strip()
        if text == "/quit":
            break
        if text == "/restart":
            assistant.reset(NAME, sender)
            stdout.write("（已重新开始）\n")
            continue
        text = buttons.get(text, text)  # typing a button's title presses it
        replies = assistant.handle(UserMessage(sender_id=sender, text=text, channel=NAME, phone=phone))
        buttons = {b.title: b.payload for r in replies for b in r.buttons}
        for reply in replies:
            _show(reply, stdout)
        if replies and replies[-1].end_session:
            break



def run_call(runtime, stdin: TextIO, stdout: TextIO, caller: str | None = None, sender: str = "CAterminal0001") -> None:
    """`python -m assistant call`: a phone call in the terminal, for staff training. Type keys
    (digits, *, #; a long number ends with #) or words as the caller would say them."""
    from assistant.ivr import CallInput
    from channels.phone_call import PhoneCall

    phone = PhoneCall(runtime, runtime.ivr_flow)
    runtime.assistant.reset("voice", sender)
    stdout.write("（模拟来电：输入按键如 1、0、#，或直接输入要说的话；/hangup 挂机）\n")
    step = phone.greet(sender, caller)
    while True:
        stdout.write("热线：" + "".join(step.say) + "\n")
        if step.next == "person":
            stdout.write("（转接工作人员）\n")
        if step.next != "listen":
            break
        stdout.write("来电人：")
        stdout.flush()
        line = stdin.readline()
        if not line or line.strip() == "/hangup":
            break
        text = line.strip()
        is_keys = bool(text) and all(ch in "0123456789*#" for ch in text)
        value = CallInput(digits=text if is_keys else "", speech="" if is_keys else text)
        step = phone.heard(sender, caller, step.step or "main", step.expects, step.tries, value)
    runtime.calls.end(sender, "completed")
