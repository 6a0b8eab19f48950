"""ProxyAwareBackend: the case store as the assistant sees it when family members may act for a
senior — a grant is needed before a case is filed for someone else, and the senior is told."""
from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from assistant.ports import (
    ActingForRefused,
    CaseReceipt,
    CaseRequest,
    HandoffRequest,
    ProgressItem,
    ResidentRecord,
    ServiceBackend,
)
from backend.people.proxy.model import (
    REFUSALS,
    SCOPE_BY_KIND,
    Decision,
    ProxyError,
)
from backend.people.proxy.service import ProxyService

log = logging.getLogger(__name__)


# --- enforcement around the case store ---------------------------------------------------------
class ProxyNotAllowed(ActingForRefused):
    """A family member tried to file a case for a senior without a grant covering it."""

    def __init__(self, decision: Decision) -> None:
        super().__init__(decision.reason)
        self.decision = decision
        self.reason = decision.reason
        self.how_to_ask = decision.how_to_ask or REFUSALS["no_grant"]


class ProxyAwareBackend:
    """ServiceBackend decorator: a family_proxy case also opens a grant (consent SMS to the
    parent); a case filed with `submitted_by_phone` needs a grant covering its scope (else
    ProxyNotAllowed, before anything is stored) and the parent is told about it afterwards.
    Other attributes (staff helpers) pass through to the wrapped backend."""

    def __init__(self, inner: ServiceBackend, proxies: ProxyService,
                 describe: Callable[[str], str] = lambda category: "一件事", *, progress_limit: int = 5) -> None:
        self.inner = inner
        self.proxies = proxies
        self.describe = describe  # category → what the parent reads ("老年证申请")
        self.progress_limit = progress_limit

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def precheck(self, proxy_phone: str | None, kind: str) -> Decision | None:
        """For the start of a form filled for someone else: None when no grant is needed."""
        scope = SCOPE_BY_KIND.get(kind)
        if not proxy_phone or scope is None:
            return None
        return self.proxies.check_any(proxy_phone, scope)

    def submit_case(self, request: CaseRequest) -> CaseReceipt:
        proxy_phone, senior = request.submitted_by_phone, request.subject
        if request.kind == "proxy_request":
            receipt = self.inner.submit_case(request)
            if proxy_phone and senior.phone:
                try:
                    self.proxies.request_from_case(receipt.reference, senior.phone, proxy_phone)
                except ProxyError as exc:  # own phone, or too many open requests: staff follow up
                    log.warning("proxy request %s not opened: %s", receipt.reference, exc)
            return receipt
        scope = SCOPE_BY_KIND.get(request.kind)
        if not proxy_phone or scope is None:
            return self.inner.submit_case(request)
        decision = self.proxies.check(proxy_phone, senior, scope)
        if not decision.allowed:
            raise ProxyNotAllowed(decision)
        receipt = self.inner.submit_case(request)
        if decision.reason == "active" and not receipt.duplicate:  # a duplicate filed nothing new
            self.proxies.record_submission(proxy_phone, senior, scope=scope, reference=receipt.reference,
                                           what=self.describe(request.category))
        return receipt

    def create_handoff(self, request: HandoffRequest) -> CaseReceipt:
        return self.inner.create_handoff(request)

    def progress(self, *, phone: str | None = None, reference: str | None = None) -> list[ProgressItem]:
        """By phone, a family member with a "view" grant also sees the parent's cases."""
        items = self.inner.progress(phone=phone, reference=reference)
        if phone is None or reference is not None:
            return items
        seniors = self.proxies.seniors_viewable_by(phone)
        if not seniors:
            return items
        for senior_phone in seniors:
            items += self.inner.progress(phone=senior_phone)
        unique = {item.reference: item for item in items}.values()
        return sorted(unique, key=lambda item: item.updated_at, reverse=True)[:self.progress_limit]

    def find_resident(self, *, id_number: str | None = None, phone: str | None = None) -> ResidentRecord | None:
        return self.inner.find_resident(id_number=id_number, phone=phone)
