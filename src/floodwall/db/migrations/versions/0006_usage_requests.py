"""usage.requests: a usage row counts the calls of one principal, endpoint, model and outcome over a moment

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # the rows written before were one call each
    op.add_column("usage", sa.Column("requests", sa.BigInteger(), nullable=False, server_default="1"))


def downgrade() -> None:
    with op.batch_alter_table("usage") as batch:
        batch.drop_column("requests")
