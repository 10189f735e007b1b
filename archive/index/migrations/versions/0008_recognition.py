"""Studies carry their recognition marks, for the sharing policy to test without a look-up.

Revision ID: 0008
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op

from archive.guideline.marks import recognition

revision = "0008"
down_revision = "0007"


def upgrade() -> None:
    op.add_column("studies", sa.Column("recognition", sa.Text))
    conn = op.get_bind()
    marked: dict[int, list[tuple[str, str]]] = {}
    for study_pk, rule_set, mark in conn.execute(sa.text(
            "SELECT study_pk, rule_set, mark FROM item_results WHERE verdict = 'pass' AND mark IS NOT NULL")):
        marked.setdefault(study_pk, []).append((rule_set, mark))
    if marked:
        conn.execute(sa.text("UPDATE studies SET recognition = :recognition WHERE pk = :pk"),
                     [{"pk": pk, "recognition": recognition(pairs)} for pk, pairs in marked.items()])
    op.drop_index("ix_item_results_recognised", "item_results")


def downgrade() -> None:
    op.create_index("ix_item_results_recognised", "item_results",
                    ["study_pk", "verdict", "rule_set", "mark", "hospital_id"])
    # Not a batch (a copy of the table), which SQLite's foreign keys to studies forbid: SQLite has
    # dropped columns itself since 3.35.
    op.execute("ALTER TABLE studies DROP COLUMN recognition")
