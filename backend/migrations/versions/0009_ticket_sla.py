"""Ticket deadlines: tickets.due_at (from the category's SLA in config.yml, set when the ticket is
categorised) and tickets.escalated_at (when the overdue job told the department head).

Existing tickets get no deadline (NULL): their SLA was never promised; they sort after the rest.

Revision ID: 0009
Revises: 0008
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("tickets") as batch:
        batch.add_column(sa.Column("due_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("escalated_at", sa.DateTime(timezone=True), nullable=True))
        batch.create_index("ix_tickets_due_at", ["due_at"])


def downgrade() -> None:
    with op.batch_alter_table("tickets") as batch:
        batch.drop_index("ix_tickets_due_at")
        batch.drop_column("escalated_at")
        batch.drop_column("due_at")
