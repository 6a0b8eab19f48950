"""Residents' contact preferences by phone (blind index): language (zh / yue), SMS in written
Cantonese, notices by SMS or voice, no more notice calls. Every change is audited."""
from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from sqlalchemy import select

from backend.infra.crypto import FieldCipher
from backend.infra.tx import TransactionRunner, UnitOfWork
from backend.outreach.store import ContactPreference

LANGUAGES = ("zh", "yue")


def channel_language(pref: ContactPreference | None, channel: str) -> str | None:
    """The resident's language on `channel`, None without a preference. SMS are standard written
    Chinese unless the resident asked for written Cantonese."""
    if pref is None or pref.language not in LANGUAGES:
        return None
    if channel == "sms" and pref.language == "yue" and not pref.written_cantonese:
        return None
    return pref.language


class Preferences:
    def __init__(self, cipher: FieldCipher) -> None:
        self.cipher = cipher

    def phone_hash(self, phone: str) -> str:
        return self.cipher.blind_index(phone, "phone")

    def find(self, unit: UnitOfWork, phone_hash: str) -> ContactPreference | None:
        return unit.session.scalar(select(ContactPreference).where(ContactPreference.phone_hash == phone_hash))

    def language(self, unit: UnitOfWork, phone_hash: str) -> str:
        return channel_language(self.find(unit, phone_hash), "voice") or "zh"

    def sms_language(self, unit: UnitOfWork, phone_hash: str) -> str:
        return channel_language(self.find(unit, phone_hash), "sms") or "zh"

    def update(self, unit: UnitOfWork, phone_hash: str, actor: str, **values: object) -> ContactPreference:
        pref = self.find(unit, phone_hash)
        if pref is None:
            pref = ContactPreference(phone_hash=phone_hash, language="zh", written_cantonese=False,
                                     no_notice_calls=False, created_at=unit.now)
            unit.session.add(pref)
        if "language" in values and values["language"] not in LANGUAGES:
            raise ValueError(f"language must be one of {LANGUAGES}")
        for key, value in values.items():
            setattr(pref, key, value)
        pref.set_by, pref.updated_at = actor[:64], unit.now
        unit.session.flush()
        unit.audit(actor, "update", pref.id, entity_type="contact_preference", fields=sorted(values))
        return pref


class LanguageStore:
    """The core's LanguagePreferences port on the store: what a resident chose ("讲广东话") is
    remembered for their next call, chat or outreach call; on SMS, Cantonese only when they asked
    for it by SMS (written Cantonese)."""

    def __init__(self, sessions: Callable[[], Any], cipher: FieldCipher, clock: Callable[[], datetime]) -> None:
        self.prefs = Preferences(cipher)
        self.runner = TransactionRunner(sessions, clock)

    def language_for(self, phone: str, channel: str) -> str | None:
        return channel_language(self.runner.run(lambda unit: self.prefs.find(unit, self.prefs.phone_hash(phone))),
                                channel)

    def remember(self, phone: str, language: str, channel: str) -> None:
        values: dict[str, Any] = {"language": language}
        if channel == "sms":
            values["written_cantonese"] = language == "yue"
        self.runner.run(lambda unit: self.prefs.update(unit, self.prefs.phone_hash(phone), f"resident:{channel}",
                                                       **values))
