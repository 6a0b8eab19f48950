"""Keyed audit chain: audit_entries.key_version.

Entries written from now on are linked with HMAC-SM3 under the audit key (backend.infra.crypto
KeyRing.audit_key_versions) and record the key version they used. Existing entries keep their
plain SM3 links and get key_version 0 ("legacy"): they stay verifiable exactly as before, and
`audit verify` accepts version-0 entries only as the chain's prefix, never after a keyed entry
(that would be a re-chain without the key). They are not re-linked here: a migration has the
database URL, not the key material.

Revision ID: 0008
Revises: 0007
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("audit_entries") as batch:
        batch.add_column(sa.Column("key_version", sa.Integer(), nullable=False, server_default="0"))


def downgrade() -> None:
    # Keyed entries cannot be told apart without this column: downgrading makes them unverifiable.
    with op.batch_alter_table("audit_entries") as batch:
        batch.drop_column("key_version")
