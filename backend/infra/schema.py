"""Every table of the store in one place: importing this registers each model module on
Base.metadata, for Alembic's environment and the schema-vs-migrations check."""
from __future__ import annotations

from backend.alerts import store as alert_store  # noqa: F401  (imported for their tables)
from backend.infra import audit_chain, models  # noqa: F401
from backend.messaging import calls  # noqa: F401
from backend.outreach import store as outreach_store  # noqa: F401
from backend.people import proxy, staff  # noqa: F401

metadata = models.Base.metadata
