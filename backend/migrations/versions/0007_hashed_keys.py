"""Idempotency keys without personal data: existing keys are replaced.

Keys used to be stored as given ("sms:+8613700002222:<form>", "open311:<api key>:…"), which put
SMS senders' phone numbers in a column that is neither encrypted nor masked. The code now stores
`k1:` + a keyed SM3 hash (backend.infra.models.idempotency_digest). Old rows cannot be re-hashed here:
a migration gets a database URL, not the key material (and loading keys here could create a
fresh key file that matches nothing). They get `legacy:<row id>` instead: unique, and naming
nobody. The only thing lost is matching a retry of a request made before the upgrade; a finished
conversation never resubmits its key, and a redelivered SMS is caught by its MessageSid first.

Revision ID: 0007
Revises: 0006
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

CASE_TABLES = ("applications", "bookings", "tickets", "handoffs")


def upgrade() -> None:
    for table in CASE_TABLES:
        # One statement per table; `||` concatenates on SQLite and Postgres alike.
        op.execute(sa.text(
            f"UPDATE {table} SET idempotency_key = 'legacy:' || id "  # noqa: S608 - fixed table names
            "WHERE idempotency_key NOT LIKE 'k1:%' AND idempotency_key NOT LIKE 'legacy:%'"
        ))


def downgrade() -> None:
    # Nothing to undo: the old keys are gone on purpose, and the hashed ones work with old code
    # too (it only compares keys for equality; a pre-upgrade retry would simply not match).
    pass
