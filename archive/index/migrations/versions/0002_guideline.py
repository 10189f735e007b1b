"""The sharing guideline: instance facts, judging state, compliance records,
item results and patient identities.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"


def upgrade() -> None:
    when = sa.DateTime(timezone=True)
    with op.batch_alter_table("instances") as batch:
        batch.add_column(sa.Column("facts", sa.LargeBinary))
    with op.batch_alter_table("studies") as batch:
        batch.add_column(sa.Column("revision", sa.Integer, nullable=False, server_default="0"))
        # Studies archived before judging existed are judged once, after the upgrade.
        batch.add_column(sa.Column("judge_pending", sa.Boolean, nullable=False,
                                   server_default=sa.true()))
        batch.add_column(sa.Column("judged_revision", sa.Integer))
        batch.add_column(sa.Column("claimed_until", when))
        batch.add_column(sa.Column("claimed_by", sa.String(64)))
    with op.batch_alter_table("studies") as batch:
        batch.alter_column("judge_pending", server_default=sa.false())
    op.create_index("ix_studies_judge_pending", "studies", ["judge_pending", "updated_at"])
    op.create_table(
        "judgements",
        sa.Column("pk", sa.Integer, primary_key=True),
        sa.Column("study_pk", sa.Integer, sa.ForeignKey("studies.pk"), nullable=False),
        sa.Column("rule_set", sa.String(64), nullable=False),
        sa.Column("version", sa.String(64), nullable=False),
        sa.Column("verdict", sa.String(16), nullable=False),
        sa.Column("record", sa.LargeBinary, nullable=False),
        sa.Column("judged_at", when, nullable=False),
        sa.Column("current", sa.Boolean, nullable=False),
    )
    op.create_index("ix_judgements_study", "judgements", ["study_pk", "current"])
    op.create_table(
        "item_results",
        sa.Column("pk", sa.Integer, primary_key=True),
        sa.Column("judgement_pk", sa.Integer, sa.ForeignKey("judgements.pk"), nullable=False),
        sa.Column("study_pk", sa.Integer, sa.ForeignKey("studies.pk"), nullable=False),
        sa.Column("hospital_id", sa.String(64)),
        sa.Column("rule_set", sa.String(64), nullable=False),
        sa.Column("item", sa.String(64), nullable=False),
        sa.Column("verdict", sa.String(16), nullable=False),
        sa.Column("mark", sa.String(32)),
        sa.Column("study_date", sa.String(8), nullable=False),
        sa.Column("failed_rules", sa.Text, nullable=False),
        sa.Column("judged_at", when, nullable=False),
    )
    op.create_index("ix_item_results_judgement_pk", "item_results", ["judgement_pk"])
    op.create_index("ix_item_results_study_pk", "item_results", ["study_pk"])
    op.create_index("ix_item_results_hospital", "item_results", ["hospital_id", "item"])
    op.create_table(
        "study_identities",
        sa.Column("pk", sa.Integer, primary_key=True),
        sa.Column("study_pk", sa.Integer, sa.ForeignKey("studies.pk"), nullable=False),
        sa.Column("patient_id", sa.String(64), nullable=False),
        sa.Column("issuer", sa.String(128), nullable=False),
    )
    op.create_index("ix_study_identities_study_pk", "study_identities", ["study_pk"])
    op.create_index("ix_study_identities_id", "study_identities", ["patient_id", "issuer"])


def downgrade() -> None:
    for table in ("study_identities", "item_results", "judgements"):
        op.drop_table(table)
    op.drop_index("ix_studies_judge_pending", "studies")
    with op.batch_alter_table("studies") as batch:
        for column in ("claimed_by", "claimed_until", "judged_revision", "judge_pending", "revision"):
            batch.drop_column(column)
    with op.batch_alter_table("instances") as batch:
        batch.drop_column("facts")
