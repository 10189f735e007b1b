"""Deleting studies, series and instances: the journal of objects still to remove.

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"


def upgrade() -> None:
    op.create_table(
        "deletions",
        sa.Column("pk", sa.Integer, primary_key=True),
        sa.Column("blob_key", sa.Text, nullable=False),
        sa.Column("study_uid", sa.String(64), nullable=False),
        sa.Column("requested_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("deletions")
