"""Fixtures for the conversational core: a trained NLU (once per session), a fixed clock and a
runtime on a real SQLite store in a temporary directory."""
from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from assistant.config import load_settings
from assistant.nlu.idcard import check_digit
from assistant.types import UserMessage
from runtime.container import build_runtime, load_nlu

TZ = ZoneInfo("Asia/Shanghai")


class FakeClock:
    """Injected "now": a Wednesday, 10:00 in Shanghai, inside office hours, unless moved."""

    def __init__(self, start: datetime = datetime(2026, 11, 25, 10, 0, tzinfo=TZ)) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **kwargs: float) -> None:
        self.now += timedelta(**kwargs)


def make_id(birth: str = "19450302", region: str = "110101", seq: str = "001") -> str:
    first17 = region + birth + seq
    return first17 + check_digit(first17)


def wrong_check(id_number: str) -> str:
    last = id_number[-1]
    return id_number[:-1] + ("0" if last != "0" else "1")


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def nlu(model_dir: Path):
    settings = load_settings({"MODEL_DIR": str(model_dir)})
    return load_nlu(settings)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def settings_env(tmp_path: Path, model_dir: Path) -> dict[str, str]:
    return {"DATA_DIR": str(tmp_path / "var"), "MODEL_DIR": str(model_dir),
            "DATABASE_URL": f"sqlite:///{tmp_path / 'var' / 'test.db'}"}


@pytest.fixture
def runtime(settings_env: dict[str, str], nlu, clock: FakeClock):
    (Path(settings_env["DATA_DIR"])).mkdir(parents=True, exist_ok=True)
    return build_runtime(load_settings(settings_env), clock=clock, nlu=nlu)


class Conversation:
    """Drives one conversation through the core the way a channel does."""

    def __init__(self, runtime, sender: str = "u1", channel: str = "rest", phone: str | None = None) -> None:
        self.runtime, self.sender, self.channel, self.phone = runtime, sender, channel, phone
        self.replies = []
        self.counter = 0

    def say(self, text: str, message_id: str | None = None) -> str:
        self.counter += 1
        self.replies = self.runtime.assistant.handle(
            UserMessage(sender_id=self.sender, text=text, channel=self.channel, phone=self.phone,
                        message_id=message_id)
        )
        return self.text

    @property
    def text(self) -> str:
        return "".join(r.text for r in self.replies)

    @property
    def last(self):
        return self.replies[-1]


@pytest.fixture
def talk(runtime):
    def start(**kwargs) -> Conversation:
        return Conversation(runtime, **kwargs)

    return start
