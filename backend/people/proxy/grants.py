"""The life of a family proxy grant: request (consent SMS to the senior), consent or decline by
SMS, keypad or in person, revoke by either side or staff, expiry, and the senior's SMS replies."""
from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

from sqlalchemy import or_, select

from backend.infra.models import Application, Resident, StatusEvent
from backend.people.proxy.core import ProxyCore
from backend.people.proxy.model import (
    CONSENT_CHANNELS,
    CONSENT_RE,
    DECLINE_RE,
    ENTITY_TYPE,
    OPEN_STATUSES,
    RELATION_LABELS_ZH,
    REVOKE_RE,
    TEXTS,
    GrantView,
    ProxyError,
    ProxyGrant,
    SmsOutcome,
    check_scopes,
    normalise_sms,
    phone_tail,
)
from backend.people.proxy.notify import ProxyUnit


class ProxyGrants(ProxyCore):
    """Grant state changes, one transaction each."""

    # -- request ----------------------------------------------------------------------------------
    def request(
        self,
        *,
        senior_phone: str,
        proxy_phone: str,
        relation: str,
        scopes: Sequence[str] | None = None,
        request_reference: str | None = None,
        actor: str = "resident",
    ) -> GrantView:
        """A pending grant and one consent SMS to the senior. Idempotent per request reference,
        and a second request from the same family member while one is pending returns that one."""
        scopes = tuple(scopes or self.policy.default_scopes)
        check_scopes(scopes)
        senior_hash, proxy_hash = self._hash(senior_phone), self._hash(proxy_phone)
        if not senior_hash or not proxy_hash:
            raise ValueError("both the senior's and the proxy's phone are needed")
        if senior_hash == proxy_hash:
            # The parent's consent must come from a phone other than the requester's.
            raise ProxyError("the proxy's phone is the senior's phone")

        def work(unit: ProxyUnit) -> GrantView:
            session = unit.session
            now = self._now()
            if request_reference:
                existing = session.scalar(select(ProxyGrant).where(ProxyGrant.request_reference == request_reference))
                if existing is not None:
                    return self._view(existing)
            pending = session.scalars(
                select(ProxyGrant).where(ProxyGrant.senior_phone_hash == senior_hash,
                                         ProxyGrant.status == "pending_consent",
                                         ProxyGrant.expires_at > now)
            ).all()
            same = [g for g in pending if g.proxy_phone_hash == proxy_hash and g.scope_set == set(scopes)]
            if same:
                return self._view(same[0])
            if len(pending) >= self.policy.max_pending_per_senior:
                raise ProxyError("too many pending proxy requests for this senior")
            senior = session.scalars(select(Resident).where(Resident.phone_hash == senior_hash).limit(2)).all()
            proxy = session.scalars(select(Resident).where(Resident.phone_hash == proxy_hash).limit(2)).all()
            grant = ProxyGrant(
                request_reference=request_reference,
                senior_resident_id=senior[0].id if len(senior) == 1 else None,  # shared phone: no guess
                senior_phone_hash=senior_hash,
                senior_phone_enc=self._cipher.encrypt(senior_phone.strip()),
                proxy_resident_id=proxy[0].id if len(proxy) == 1 else None,
                proxy_phone_hash=proxy_hash,
                proxy_phone_enc=self._cipher.encrypt(proxy_phone.strip()),
                relation=relation if relation in RELATION_LABELS_ZH else "other",
                scopes=",".join(sorted(scopes)),
                status="pending_consent",
                expires_at=now + timedelta(days=self.policy.consent_days),
                created_at=now,
                updated_at=now,
            )
            session.add(grant)
            session.flush()  # a concurrent same-reference insert fails here → retried
            session.add(StatusEvent(entity_type=ENTITY_TYPE, entity_id=grant.id, from_status=None,
                                    to_status="pending_consent", actor=actor[:64], at=now))
            self._notify(unit, grant, "consent_request", "senior",
                         TEXTS["consent_request"].format(**self._values(grant)), now)
            unit.audits.append(dict(actor=actor[:64], action="create", entity_type=ENTITY_TYPE,
                                    entity_id=grant.id, detail={"reference": request_reference,
                                                                "scopes": sorted(scopes),
                                                                "relation": grant.relation}))
            return self._view(grant)

        return self._run(work)

    def request_from_case(self, reference: str, senior_phone: str, proxy_phone: str) -> GrantView:
        """From a submitted family_proxy case (its relation slot); the phones come from the
        CaseRequest because the case row keeps only their hashes."""
        with self._sessions() as session:
            row = session.scalar(select(Application).where(Application.reference == reference))
            if row is None:
                raise LookupError(f"no proxy request {reference}")
            fields = self._cipher.decrypt_json(row.fields_enc) or {}
        return self.request(senior_phone=senior_phone, proxy_phone=proxy_phone,
                            relation=str(fields.get("relation") or "other"), request_reference=reference,
                            actor=f"resident:{row.channel}")

    # -- consent ----------------------------------------------------------------------------------
    def _pending_answer(self, unit: ProxyUnit, grant_id: int, channel: str, from_phone: str | None,
                        answered: str) -> tuple[ProxyGrant, datetime]:
        """The grant a senior answers (locked), checked to be theirs; refused unless it awaits an
        answer or is already `answered` (the caller returns that unchanged: a repeated reply)."""
        now = self._now()
        grant = self._lock(unit.session, grant_id)
        self._check_consenter(grant, channel, from_phone)
        if grant.status not in ("pending_consent", answered):
            raise ProxyError(f"grant {grant_id} is {grant.status}")
        return grant, now

    def consent(self, grant_id: int, *, channel: str, from_phone: str | None = None,
                staff_id: str | None = None) -> GrantView:
        """The senior agrees: by SMS or keypad from the phone the request named, or in person
        before staff (who checked the senior's ID card)."""
        actor = self._consent_actor(channel, from_phone, staff_id)

        def work(unit: ProxyUnit) -> GrantView:
            session = unit.session
            grant, now = self._pending_answer(unit, grant_id, channel, from_phone, "active")
            if grant.status == "active":
                return self._view(grant)  # a repeated "1" changes nothing
            if grant.expires_at <= now:
                self._transition(unit, grant, "expired", "system", now)
                return self._view(grant)  # committed as expired, then refused below
            # An older grant for the same pair is replaced, so there is one answer to check().
            for old in session.scalars(select(ProxyGrant).where(
                    ProxyGrant.senior_phone_hash == grant.senior_phone_hash,
                    ProxyGrant.proxy_phone_hash == grant.proxy_phone_hash,
                    ProxyGrant.status == "active", ProxyGrant.id != grant.id)).all():
                old.revoked_by = "superseded"
                self._transition(unit, old, "revoked", actor, now, superseded_by=grant.id)
            grant.consent_channel, grant.consented_at, grant.consented_by = channel, now, actor[:64]
            grant.expires_at = now + timedelta(days=self.policy.grant_days)
            self._transition(unit, grant, "active", actor, now, channel=channel)
            values = self._values(grant)
            self._notify(unit, grant, "consented", "senior", TEXTS["consented_senior"].format(**values), now)
            self._notify(unit, grant, "consented", "proxy", TEXTS["consented_proxy"].format(**values), now)
            return self._view(grant)

        view: GrantView = self._run(work)
        if view.status != "active":
            raise ProxyError(f"grant {grant_id} consent window has passed")
        return view

    def decline(self, grant_id: int, *, channel: str, from_phone: str | None = None,
                staff_id: str | None = None) -> GrantView:
        actor = self._consent_actor(channel, from_phone, staff_id)

        def work(unit: ProxyUnit) -> GrantView:
            grant, now = self._pending_answer(unit, grant_id, channel, from_phone, "declined")
            if grant.status == "declined":
                return self._view(grant)
            self._transition(unit, grant, "declined", actor, now, channel=channel)
            values = self._values(grant)
            self._notify(unit, grant, "declined", "senior", TEXTS["declined_senior"].format(**values), now)
            self._notify(unit, grant, "declined", "proxy", TEXTS["declined_proxy"], now)
            return self._view(grant)

        return self._run(work)

    @staticmethod
    def _consent_actor(channel: str, from_phone: str | None, staff_id: str | None) -> str:
        if channel not in CONSENT_CHANNELS:
            raise ValueError(f"unknown consent channel {channel!r}")
        if channel == "staff":
            if not staff_id:
                raise ProxyError("in-person consent needs the staff member's id")
            return f"staff:{staff_id}"
        if not from_phone:
            raise ProxyError("SMS and keypad consent need the caller's phone")
        return "senior"

    def _check_consenter(self, grant: ProxyGrant, channel: str, from_phone: str | None) -> None:
        if channel != "staff" and self._hash(from_phone) != grant.senior_phone_hash:
            raise ProxyError("consent must come from the senior's own phone")

    # -- revoke / expire --------------------------------------------------------------------------
    def revoke(self, grant_id: int, *, by: str) -> GrantView:
        """`by`: "senior", "proxy" or "staff:<id>"."""
        if by not in ("senior", "proxy") and not by.startswith("staff:"):
            raise ValueError("revoked by senior, proxy or staff:<id>")

        def work(unit: ProxyUnit) -> GrantView:
            session = unit.session
            grant = self._lock(session, grant_id)
            self._revoke(unit, grant, by, self._now())
            return self._view(grant)

        return self._run(work)

    def _revoke(self, unit: ProxyUnit, grant: ProxyGrant, by: str,
                now: datetime) -> None:
        if grant.status not in OPEN_STATUSES:
            return
        grant.revoked_by = by[:64]
        self._transition(unit, grant, "revoked", by, now)
        values = self._values(grant)
        # Both sides learn of it; the one who asked gets the same text as confirmation.
        self._notify(unit, grant, "revoked", "senior", TEXTS["revoked_senior"].format(**values), now)
        self._notify(unit, grant, "revoked", "proxy", TEXTS["revoked_proxy"], now)

    def expire_due(self) -> int:
        """Marks grants past `expires_at` as expired (active ones tell the proxy). check()
        already treats them as expired, so this sweep is bookkeeping, run from a scheduler."""

        def work(unit: ProxyUnit) -> int:
            session = unit.session
            now = self._now()
            due = session.scalars(
                select(ProxyGrant).where(ProxyGrant.status.in_(OPEN_STATUSES), ProxyGrant.expires_at <= now)
                .order_by(ProxyGrant.id).with_for_update()
            ).all()
            for grant in due:
                was_active = grant.status == "active"
                self._transition(unit, grant, "expired", "system", now)
                if was_active:
                    self._notify(unit, grant, "expired", "proxy", TEXTS["expired_proxy"], now)
            return len(due)

        return self._run(work)

    # -- incoming SMS -----------------------------------------------------------------------------
    def handle_sms(self, from_phone: str, body: str) -> SmsOutcome:
        """Replies to consent texts and "取消代办". Anything else is not ours (handled=False)."""
        text = normalise_sms(body)
        phone_hash = self._hash(from_phone)
        if not phone_hash or not text:
            return SmsOutcome(False)
        if REVOKE_RE.match(text):
            return self._sms_revoke(phone_hash)
        consent, decline = CONSENT_RE.match(text), DECLINE_RE.match(text)
        match = consent or decline
        if match is None:
            return SmsOutcome(False)
        with self._sessions() as session:
            pending = session.scalars(
                select(ProxyGrant).where(ProxyGrant.senior_phone_hash == phone_hash,
                                         ProxyGrant.status == "pending_consent",
                                         ProxyGrant.expires_at > self._now())
                .order_by(ProxyGrant.id)
            ).all()
            tails = {g.id: phone_tail(self._cipher.decrypt(g.proxy_phone_enc)) for g in pending}
        if not pending:
            # "1" from someone with nothing pending is probably a menu choice: not ours.
            return SmsOutcome(False)
        tail = match.group(1)
        chosen = [g for g in pending if tails[g.id] == tail] if tail else list(pending)
        if len(chosen) != 1:
            return SmsOutcome(True, TEXTS["which_grant"])
        act = self.consent if consent else self.decline
        view = act(chosen[0].id, channel="sms", from_phone=from_phone)
        return SmsOutcome(True, None, (view.id,))  # the confirmation SMS went out already

    def _sms_revoke(self, phone_hash: str) -> SmsOutcome:
        def work(unit: ProxyUnit) -> tuple[int, ...]:
            session = unit.session
            now = self._now()
            grants = session.scalars(
                select(ProxyGrant).where(
                    or_(ProxyGrant.senior_phone_hash == phone_hash, ProxyGrant.proxy_phone_hash == phone_hash),
                    ProxyGrant.status.in_(OPEN_STATUSES),
                ).order_by(ProxyGrant.id).with_for_update()
            ).all()
            for grant in grants:
                by = "senior" if grant.senior_phone_hash == phone_hash else "proxy"
                self._revoke(unit, grant, by, now)
            return tuple(g.id for g in grants)

        ids = self._run(work)
        return SmsOutcome(True, None if ids else TEXTS["nothing_to_revoke"], ids)
