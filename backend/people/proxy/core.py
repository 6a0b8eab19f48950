"""The proxy service's shared plumbing: store, cipher, notifier, clock and policy, one
transaction runner (backend.infra.tx) whose units carry the pending SMS, and the helpers every grant
operation uses (notify once per dedupe key, status transitions, views)."""
from __future__ import annotations

import unicodedata
from collections.abc import Callable
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import select
from sqlalchemy.orm import Session

from assistant.ports import Clock
from backend.infra.crypto import FieldCipher
from backend.infra.models import StatusEvent
from backend.infra.tx import TransactionRunner
from backend.people.proxy.model import (
    ENTITY_TYPE,
    RELATION_LABELS_ZH,
    SCOPES,
    GrantView,
    ProxyGrant,
    ProxyNotification,
    ProxyPolicy,
    date_text,
    duration_text,
    phone_tail,
    scopes_text,
    system_clock,
)
from backend.people.proxy.notify import (
    Notifier,
    Outgoing,
    ProxyUnit,
)

T = TypeVar("T")


class ProxyCore:
    """What the grant lifecycle and the checks of ProxyService share."""

    def __init__(
        self,
        session_factory: Callable[[], Session],
        cipher: FieldCipher,
        notifier: Notifier,
        clock: Clock = system_clock,
        policy: ProxyPolicy | None = None,
    ) -> None:
        self._sessions = session_factory
        self._cipher = cipher
        self._notifier = notifier
        self._clock = clock
        self.policy = policy or ProxyPolicy()
        self._tx = TransactionRunner(session_factory, clock, attempts=3, make_unit=ProxyUnit)

    # -- plumbing ---------------------------------------------------------------------------------
    def _now(self) -> datetime:
        now = self._clock()
        if now.tzinfo is None:
            raise ValueError("clock must return a timezone-aware datetime")
        return now

    def _local(self, moment: datetime) -> datetime:
        return moment.astimezone(self._now().tzinfo)

    def _hash(self, phone: str | None) -> str | None:
        if phone is None:
            return None
        phone = unicodedata.normalize("NFKC", phone).strip()
        return self._cipher.blind_index(phone, "phone") if phone else None

    def _run(self, work: Callable[[ProxyUnit], T]) -> T:
        """`work` in one transaction (backend.infra.tx retries what a second try can fix: a concurrent
        duplicate committed first, and the retry finds it); its SMS go out with it."""

        def unit_work(unit: ProxyUnit) -> T:
            result = work(unit)
            unit.send_with(self._notifier)
            return result

        return self._tx.run(unit_work)

    def _notify(
        self, unit: ProxyUnit, grant: ProxyGrant, event: str,
        recipient: str, text: str, now: datetime, reference: str | None = None,
    ) -> None:
        dedupe_key = f"proxy:{grant.id}:{event}:{reference or recipient}"
        exists = unit.session.scalar(select(ProxyNotification.id).where(ProxyNotification.dedupe_key == dedupe_key))
        if exists is not None:
            return
        unit.session.add(ProxyNotification(grant_id=grant.id, event=event, recipient=recipient,
                                           case_reference=reference, dedupe_key=dedupe_key, created_at=now))
        phone_enc = grant.senior_phone_enc if recipient == "senior" else grant.proxy_phone_enc
        unit.messages.append(Outgoing(self._cipher.decrypt(phone_enc), text, dedupe_key))

    def _transition(
        self, unit: ProxyUnit, grant: ProxyGrant, to_status: str, actor: str, now: datetime,
        **detail: Any,
    ) -> None:
        from_status = grant.status
        grant.status, grant.updated_at = to_status, now
        if to_status in ("revoked", "expired", "declined"):
            grant.ended_at = now
        unit.session.add(StatusEvent(entity_type=ENTITY_TYPE, entity_id=grant.id, from_status=from_status,
                                     to_status=to_status, actor=actor[:64], at=now))
        unit.audits.append(dict(actor=actor[:64], action="update", entity_type=ENTITY_TYPE,
                                entity_id=grant.id, detail={"from": from_status, "to": to_status, **detail}))

    def _view(self, grant: ProxyGrant) -> GrantView:
        return GrantView(
            id=grant.id, status=grant.status, relation=grant.relation,
            scopes=tuple(s for s in SCOPES if s in grant.scope_set), expires_at=grant.expires_at,
            request_reference=grant.request_reference, consent_channel=grant.consent_channel,
            consented_at=grant.consented_at, revoked_by=grant.revoked_by,
        )

    def _values(self, grant: ProxyGrant) -> dict[str, str]:
        return {
            "relation": RELATION_LABELS_ZH.get(grant.relation, "家属"),
            "tail": phone_tail(self._cipher.decrypt(grant.proxy_phone_enc)),
            "scopes": scopes_text(grant.scope_set),
            "until": date_text(self._local(grant.expires_at)),
            "duration": duration_text(self.policy.grant_days),
        }

    @staticmethod
    def _lock(session: Session, grant_id: int) -> ProxyGrant:
        grant = session.execute(
            select(ProxyGrant).where(ProxyGrant.id == grant_id).with_for_update()
            .execution_options(populate_existing=True)
        ).scalar_one_or_none()
        if grant is None:
            raise LookupError(f"no proxy grant {grant_id}")
        return grant
