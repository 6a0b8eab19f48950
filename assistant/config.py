"""Configuration: config.yml (behaviour) + environment variables (deployment and secrets)."""
from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import yaml

from assistant.dialogue.engine import DialogueSettings, OfficeHours

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Settings:
    root: Path
    config: dict[str, Any]
    database_url: str
    redis_url: str | None
    host: str
    port: int
    model_dir: Path
    data_dir: Path
    env: Mapping[str, str] = field(default_factory=dict)

    @property
    def timezone(self) -> ZoneInfo:
        return ZoneInfo(self.config.get("dialogue", {}).get("timezone", "Asia/Shanghai"))

    @property
    def session_ttl_seconds(self) -> int:
        return int(self.config.get("dialogue", {}).get("session_ttl_minutes", 60)) * 60

    def dialogue_settings(self) -> DialogueSettings:
        dialogue = self.config.get("dialogue", {})
        handoff = self.config.get("handoff", {})
        services = self.config.get("services", {})
        return DialogueSettings(
            max_misunderstandings=int(dialogue.get("max_misunderstandings", 2)),
            transcript_turns=int(dialogue.get("transcript_turns", 30)),
            eligibility={k: int(v) for k, v in (self.config.get("eligibility") or {}).items() if isinstance(v, int)},
            office_hours=OfficeHours.from_config(handoff.get("office_hours")),
            hotline=str(handoff.get("hotline", "12345")),
            booking_days_ahead=int(services.get("booking_days_ahead", 14)),
            meal_max_portions=int(services.get("meal_max_portions", 5)),
        )


def load_settings(env: Mapping[str, str] | None = None, root: Path = ROOT) -> Settings:
    env = dict(os.environ if env is None else env)
    config_path = Path(env.get("ASSISTANT_CONFIG", root / "config.yml"))
    config = yaml.safe_load(config_path.read_text(encoding="utf-8")) or {}
    data_dir = Path(env.get("DATA_DIR", root / "var"))
    return Settings(
        root=root,
        config=config,
        database_url=env.get("DATABASE_URL") or f"sqlite:///{data_dir / 'assistant.db'}",
        redis_url=env.get("REDIS_URL") or None,
        host=env.get("HOST", "127.0.0.1"),
        port=int(env.get("PORT", "5005")),
        model_dir=Path(env.get("MODEL_DIR", root / "models")),
        data_dir=data_dir,
        env=env,
    )
