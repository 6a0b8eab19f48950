"""Family proxy grants and the notifications they caused (backend/people/proxy/).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "proxy_grants",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("request_reference", sa.String(8), nullable=True),
        sa.Column("senior_resident_id", sa.Integer(), nullable=True),
        sa.Column("senior_phone_hash", sa.String(64), nullable=False),
        sa.Column("senior_phone_enc", sa.Text(), nullable=False),
        sa.Column("proxy_resident_id", sa.Integer(), nullable=True),
        sa.Column("proxy_phone_hash", sa.String(64), nullable=False),
        sa.Column("proxy_phone_enc", sa.Text(), nullable=False),
        sa.Column("relation", sa.String(16), nullable=False),
        sa.Column("scopes", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("consent_channel", sa.String(16), nullable=True),
        sa.Column("consented_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("consented_by", sa.String(64), nullable=True),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_by", sa.String(64), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_proxy_grants"),
        sa.UniqueConstraint("request_reference", name="uq_proxy_grants_request_reference"),
        sa.ForeignKeyConstraint(["senior_resident_id"], ["residents.id"],
                                name="fk_proxy_grants_senior_resident_id_residents", ondelete="SET NULL"),
        sa.ForeignKeyConstraint(["proxy_resident_id"], ["residents.id"],
                                name="fk_proxy_grants_proxy_resident_id_residents", ondelete="SET NULL"),
    )
    for column in ("senior_resident_id", "senior_phone_hash", "proxy_resident_id", "proxy_phone_hash", "status"):
        op.create_index(f"ix_proxy_grants_{column}", "proxy_grants", [column])

    op.create_table(
        "proxy_notifications",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("grant_id", sa.Integer(), nullable=False),
        sa.Column("event", sa.String(32), nullable=False),
        sa.Column("recipient", sa.String(16), nullable=False),
        sa.Column("case_reference", sa.String(8), nullable=True),
        sa.Column("dedupe_key", sa.String(120), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_proxy_notifications"),
        sa.UniqueConstraint("dedupe_key", name="uq_proxy_notifications_dedupe_key"),
        sa.ForeignKeyConstraint(["grant_id"], ["proxy_grants.id"],
                                name="fk_proxy_notifications_grant_id_proxy_grants", ondelete="CASCADE"),
    )
    op.create_index("ix_proxy_notifications_grant_id", "proxy_notifications", ["grant_id"])


def downgrade() -> None:
    op.drop_table("proxy_notifications")
    op.drop_table("proxy_grants")
