"""The house's structure as checks: what channels may use of the running service, and what they
may not touch (the core's session layout), and the backend grouped by domain."""
from __future__ import annotations

import ast
import inspect
from pathlib import Path
from typing import Protocol

import pytest

from channels.runtime_port import ChannelRuntime, StaffPort, TicketLoopPort, VoicePort

ROOT = Path(__file__).resolve().parent.parent
# Keys of the core's conversation state (assistant/dialogue/state.py): only the core reads them.
SESSION_LAYOUT_KEYS = {"form", "confirming", "offer", "slots", "last_message_id", "requested_slot"}


def members(port: type[Protocol]) -> set[str]:
    """Every attribute and method a Protocol declares (not those of object or Protocol)."""
    names = set(getattr(port, "__annotations__", {}))
    names |= {n for n, v in vars(port).items() if not n.startswith("_") and (callable(v) or isinstance(v, property))}
    return names


@pytest.mark.parametrize("port,part", [(ChannelRuntime, None), (VoicePort, "voice"),
                                       (TicketLoopPort, "ticket_loop"), (StaffPort, "staff")])
def test_the_running_service_has_every_member_its_port_declares(runtime, port, part):
    target = runtime if part is None else getattr(runtime, part)
    missing = sorted(name for name in members(port) if not hasattr(target, name))
    assert missing == [], f"{type(target).__name__} lacks {missing} of {port.__name__}"
    for name in members(port):  # methods keep the port's parameter names (channels pass keywords)
        declared = vars(port).get(name)
        if inspect.isfunction(declared):
            actual = getattr(target, name)
            wanted = [p for p in inspect.signature(declared).parameters if p != "self"]
            assert list(inspect.signature(actual).parameters)[:len(wanted)] == wanted, name


def _string_subscripts(path: Path) -> set[str]:
    keys = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant) \
                and isinstance(node.slice.value, str):
            keys.add(node.slice.value)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get" \
                and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
            keys.add(node.args[0].value)
    return keys


def test_channels_never_read_the_core_session_layout():
    found = {path.name: sorted(_string_subscripts(path) & SESSION_LAYOUT_KEYS)
             for path in sorted((ROOT / "channels").glob("*.py"))}
    # boundary.py rewrites Flask's parsed request form ("form" of werkzeug's Request), not a session.
    found.pop("boundary.py", None)
    assert {name: keys for name, keys in found.items() if keys} == {}


def test_backend_is_grouped_by_domain():
    top = sorted(p.name for p in (ROOT / "backend").iterdir()
                 if p.name != "__pycache__" and (p.suffix == ".py" or p.is_dir()))
    assert top == ["__init__.py", "affairs", "alerts", "infra", "messaging", "migrations", "outreach", "people",
                   "tickets"]
