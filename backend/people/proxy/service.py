"""ProxyService: the family proxy grants' one service object, composed of the grant lifecycle
(grants) and the checks of what a grant allows (checks) over shared plumbing
(core)."""
from __future__ import annotations

from backend.people.proxy.checks import ProxyChecks
from backend.people.proxy.grants import ProxyGrants


class ProxyService(ProxyGrants, ProxyChecks):
    """Grants on the store, one transaction per call. A TransactionalNotifier (the outbox)
    queues SMS inside that transaction; a plain Notifier gets them after commit (a crash in
    between loses the SMS, not the ProxyNotification row saying it was due; dedupe keys make
    a resend harmless)."""
