"""Access: hospital API tokens, shares, the audit trail; instances' data set digests.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"


def upgrade() -> None:
    when = sa.DateTime(timezone=True)
    op.create_table(
        "tokens",
        sa.Column("pk", sa.Integer, primary_key=True),
        sa.Column("token_id", sa.String(32), nullable=False, unique=True),
        sa.Column("secret_sha256", sa.String(64), nullable=False),
        sa.Column("hospital_id", sa.String(64)),
        sa.Column("admin", sa.Boolean, nullable=False),
        sa.Column("label", sa.Text, nullable=False),
        sa.Column("created_at", when, nullable=False),
        sa.Column("expires_at", when),
        sa.Column("revoked_at", when),
    )
    op.create_table(
        "shares",
        sa.Column("pk", sa.Integer, primary_key=True),
        sa.Column("study_pk", sa.Integer, sa.ForeignKey("studies.pk"), nullable=False),
        sa.Column("hospital_id", sa.String(64), nullable=False),
        sa.Column("expires_at", when, nullable=False),
        sa.Column("created_by", sa.Text, nullable=False),
        sa.Column("created_at", when, nullable=False),
        sa.Column("revoked_at", when),
    )
    op.create_index("ix_shares_study_pk", "shares", ["study_pk"])
    op.create_index("ix_shares_hospital", "shares", ["hospital_id", "study_pk"])
    op.create_table(
        "audit_events",
        sa.Column("pk", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
        sa.Column("at", when, nullable=False),
        sa.Column("door", sa.String(16), nullable=False),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("hospital_id", sa.String(64)),
        sa.Column("actor", sa.String(128), nullable=False),
        sa.Column("address", sa.String(64)),
        sa.Column("study_uid", sa.String(64)),
        sa.Column("series_uid", sa.String(64)),
        sa.Column("sop_uid", sa.String(64)),
        sa.Column("detail", sa.Text),
    )
    op.create_index("ix_audit_events_at", "audit_events", ["at"])
    with op.batch_alter_table("instances") as batch:
        batch.add_column(sa.Column("dataset_sha256", sa.String(64)))
    # The sharing policy tests each study for a recognised item: from this index alone, no table read.
    op.create_index("ix_item_results_recognised", "item_results",
                    ["study_pk", "verdict", "rule_set", "mark", "hospital_id"])


def downgrade() -> None:
    with op.batch_alter_table("instances") as batch:
        batch.drop_column("dataset_sha256")
    op.drop_index("ix_item_results_recognised", "item_results")
    for table in ("audit_events", "shares", "tokens"):
        op.drop_table(table)
