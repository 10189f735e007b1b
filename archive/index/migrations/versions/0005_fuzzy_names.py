"""Fuzzy matching of person names: each patient's name in Hanyu Pinyin.

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

from archive import names

revision = "0005"
down_revision = "0004"

BATCH = 1000  # patients read and written at a time


def upgrade() -> None:
    # Plain ALTER TABLE on both engines: a batch copy of patients would break the studies' foreign keys.
    op.add_column("patients", sa.Column("name_pinyin", sa.Text, nullable=False, server_default=""))
    # With all four groups indexed, a name matched on any of them (an OR) is an index search.
    for column in ("name_phonetic", "name_pinyin"):
        op.create_index(f"ix_patients_{column}", "patients", [column], postgresql_ops={column: "text_pattern_ops"})
    # Patients already archived get theirs from the name kept at ingest (its groups joined by "=").
    patients = sa.table("patients", sa.column("pk", sa.Integer), sa.column("patient_name", sa.Text),
                        sa.column("name_pinyin", sa.Text))
    connection = op.get_bind()
    last = 0
    while rows := connection.execute(
        sa.select(patients.c.pk, patients.c.patient_name).where(patients.c.pk > last)
        .order_by(patients.c.pk).limit(BATCH)
    ).all():
        spelled = [{"key": pk, "spelled": names.pinyin(name)} for pk, name in rows]
        connection.execute(
            patients.update().where(patients.c.pk == sa.bindparam("key"))
            .values(name_pinyin=sa.bindparam("spelled")),
            [row for row in spelled if row["spelled"]] or [{"key": -1, "spelled": ""}],
        )
        last = rows[-1][0]


def downgrade() -> None:
    op.drop_index("ix_patients_name_pinyin", "patients")
    op.drop_index("ix_patients_name_phonetic", "patients")
    op.drop_column("patients", "name_pinyin")
