"""The outage queue: objects archived into the local queue folder, not yet in the blob store.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"


def upgrade() -> None:
    when = sa.DateTime(timezone=True)
    op.create_table(
        "queued_objects",
        sa.Column("pk", sa.Integer, primary_key=True),
        sa.Column("blob_key", sa.Text, nullable=False, unique=True),
        sa.Column("file", sa.Text, nullable=False),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("queued_at", when, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("last_error", sa.Text),
        sa.Column("claimed_until", when),
        sa.Column("claimed_by", sa.String(64)),
    )
    op.create_index("ix_queued_objects_host", "queued_objects", ["host", "queued_at"])


def downgrade() -> None:
    op.drop_table("queued_objects")
