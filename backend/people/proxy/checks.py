"""What a family proxy grant allows: may this phone act for this senior in this scope, whose
cases may it follow, who gets alert calls, and the record of a case a proxy filed."""
from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from assistant.ports import Person
from backend.infra.models import Resident
from backend.people.proxy.core import ProxyCore
from backend.people.proxy.model import (
    ENTITY_TYPE,
    OPEN_STATUSES,
    REFUSALS,
    RELATION_LABELS_ZH,
    SCOPE_LABELS_ZH,
    TEXTS,
    Decision,
    GrantView,
    ProxyGrant,
    ProxyNotification,
    check_scopes,
)
from backend.people.proxy.notify import ProxyUnit


class ProxyChecks(ProxyCore):
    """Read-mostly questions about grants (record_submission writes the parent's notice)."""

    # -- check and notify -------------------------------------------------------------------------
    def _grants_for(self, session: Session, proxy_hash: str, senior: Person) -> list[ProxyGrant] | None:
        """Grants of this proxy for this senior; None when the senior cannot be identified.
        An ID number that names a known resident decides alone (a shared phone must not
        extend a father's consent to the mother); otherwise the senior's phone decides."""
        id_number = (senior.id_number or "").strip()
        candidates = session.scalars(
            select(ProxyGrant).where(ProxyGrant.proxy_phone_hash == proxy_hash).order_by(ProxyGrant.id.desc())
        ).all()
        if id_number:
            resident_id = session.scalar(
                select(Resident.id).where(Resident.id_hash == self._cipher.blind_index(id_number, "id_number"))
            )
            if resident_id is not None:
                return [g for g in candidates if g.senior_resident_id == resident_id]
        senior_hash = self._hash(senior.phone)
        if senior_hash is None:
            return None
        return [g for g in candidates if g.senior_phone_hash == senior_hash]

    def check(self, proxy_phone: str, senior: Person, scope: str) -> Decision:
        """May `proxy_phone` act for `senior` in `scope` now? Read-only."""
        check_scopes([scope])
        proxy_hash = self._hash(proxy_phone)
        if proxy_hash is None:
            return Decision(False, "no_grant", REFUSALS["no_grant"])
        if proxy_hash == self._hash(senior.phone):
            return Decision(True, "self")
        now = self._now()
        with self._sessions() as session:
            grants = self._grants_for(session, proxy_hash, senior)
        if grants is None:
            return Decision(False, "unknown_senior", REFUSALS["unknown_senior"])
        live = [g for g in grants if g.status in OPEN_STATUSES and g.expires_at > now]
        for grant in live:
            if grant.status == "active" and scope in grant.scope_set:
                return Decision(True, "active", None, grant.id)
        if any(g.status == "active" for g in live):
            reason = "scope_missing"
        elif live:
            reason = "pending_consent"
        elif grants:
            latest = grants[0]
            reason = "expired" if latest.status in OPEN_STATUSES else latest.status
        else:
            reason = "no_grant"
        grant_id = (live or grants)[0].id if (live or grants) else None
        return Decision(False, reason, REFUSALS[reason].format(scope=SCOPE_LABELS_ZH[scope]), grant_id)

    def check_any(self, proxy_phone: str, scope: str) -> Decision:
        """Has this phone an active grant in `scope` for anybody? Lets the dialogue refuse at
        the start of a form, before the family member has said the senior's details."""
        check_scopes([scope])
        proxy_hash = self._hash(proxy_phone)
        now = self._now()
        with self._sessions() as session:
            grants = session.scalars(select(ProxyGrant).where(ProxyGrant.proxy_phone_hash == proxy_hash)
                                     .order_by(ProxyGrant.id.desc())).all() if proxy_hash else []
        live = [g for g in grants if g.status in OPEN_STATUSES and g.expires_at > now]
        for grant in live:
            if grant.status == "active" and scope in grant.scope_set:
                return Decision(True, "active", None, grant.id)
        reason = ("scope_missing" if any(g.status == "active" for g in live)
                  else "pending_consent" if live else "no_grant")
        return Decision(False, reason, REFUSALS[reason].format(scope=SCOPE_LABELS_ZH[scope]),
                        live[0].id if live else None)

    def seniors_viewable_by(self, proxy_phone: str) -> list[str]:
        """Phones of the seniors whose cases this phone may follow (active "view" grants)."""
        proxy_hash = self._hash(proxy_phone)
        if proxy_hash is None:
            return []
        now = self._now()
        with self._sessions() as session:
            grants = session.scalars(select(ProxyGrant).where(ProxyGrant.proxy_phone_hash == proxy_hash,
                                                              ProxyGrant.status == "active",
                                                              ProxyGrant.expires_at > now)
                                     .order_by(ProxyGrant.id)).all()
            phones = [self._cipher.decrypt(g.senior_phone_enc) for g in grants if "view" in g.scope_set]
        return list(dict.fromkeys(phones))

    def alert_contacts(self, senior_phone: str) -> list[tuple[str, str]]:
        """(phone, relation label) of family members this senior allowed to get alert calls,
        for the care-alert dispatcher (next to the households file's contacts)."""
        senior_hash = self._hash(senior_phone)
        if senior_hash is None:
            return []
        now = self._now()
        with self._sessions() as session:
            grants = session.scalars(select(ProxyGrant).where(ProxyGrant.senior_phone_hash == senior_hash,
                                                              ProxyGrant.status == "active",
                                                              ProxyGrant.expires_at > now)
                                     .order_by(ProxyGrant.id)).all()
            return [(self._cipher.decrypt(g.proxy_phone_enc), RELATION_LABELS_ZH.get(g.relation, "家属"))
                    for g in grants if "alert_calls" in g.scope_set]

    def record_submission(self, proxy_phone: str, senior: Person, *, scope: str, reference: str,
                          what: str) -> int | None:
        """After a proxy filed case `reference` for `senior`: a notification row, an audit
        entry and an SMS to the senior. Idempotent per reference. Returns the grant id, or
        None when no active grant covers it (nothing is recorded then)."""
        decision = self.check(proxy_phone, senior, scope)
        if not decision.allowed or decision.grant_id is None:
            return None

        def work(unit: ProxyUnit) -> int:
            session = unit.session
            now = self._now()
            grant = self._lock(session, decision.grant_id or 0)
            key = f"proxy:{grant.id}:proxy_submitted:{reference}"
            if session.scalar(select(ProxyNotification.id).where(ProxyNotification.dedupe_key == key)) is None:
                text = TEXTS["proxy_submitted"].format(**self._values(grant), what=what, reference=reference)
                self._notify(unit, grant, "proxy_submitted", "senior", text, now, reference)
                unit.audits.append(dict(actor="proxy", action="create", entity_type=ENTITY_TYPE,
                                        entity_id=grant.id, detail={"event": "proxy_submitted",
                                                                    "reference": reference, "scope": scope}))
            return grant.id

        return self._run(work)

    # -- reads ------------------------------------------------------------------------------------
    def get(self, grant_id: int) -> GrantView | None:
        with self._sessions() as session:
            grant = session.get(ProxyGrant, grant_id)
            return self._view(grant) if grant else None

    def grants_of_senior(self, senior_phone: str) -> list[GrantView]:
        senior_hash = self._hash(senior_phone)
        with self._sessions() as session:
            rows = session.scalars(select(ProxyGrant).where(ProxyGrant.senior_phone_hash == senior_hash)
                                   .order_by(ProxyGrant.id)).all()
            return [self._view(g) for g in rows]

