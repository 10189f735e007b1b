"""The first index: patients, studies, series, instances.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None


def upgrade() -> None:
    uid = sa.String(64)
    when = sa.DateTime(timezone=True)
    op.create_table(
        "patients",
        sa.Column("pk", sa.Integer, primary_key=True),
        sa.Column("patient_id", sa.String(64), nullable=False),
        sa.Column("id_scope", sa.String(128), nullable=False),
        sa.Column("patient_name", sa.Text, nullable=False),
        sa.Column("name_alphabetic", sa.Text, nullable=False),
        sa.Column("name_ideographic", sa.Text, nullable=False),
        sa.Column("name_phonetic", sa.Text, nullable=False),
        sa.Column("birth_date", sa.String(8), nullable=False),
        sa.Column("sex", sa.String(16), nullable=False),
        sa.UniqueConstraint("patient_id", "id_scope", name="uq_patients_id"),
    )
    op.create_table(
        "studies",
        sa.Column("pk", sa.Integer, primary_key=True),
        sa.Column("study_uid", uid, nullable=False, unique=True),
        sa.Column("patient_pk", sa.Integer, sa.ForeignKey("patients.pk"), nullable=False),
        sa.Column("hospital_id", sa.String(64)),
        sa.Column("study_date", sa.String(8), nullable=False),
        sa.Column("study_time", sa.String(16), nullable=False),
        sa.Column("accession_number", sa.String(64), nullable=False),
        sa.Column("study_id", sa.String(16), nullable=False),
        sa.Column("study_description", sa.Text, nullable=False),
        sa.Column("referring_physician", sa.Text, nullable=False),
        sa.Column("created_at", when, nullable=False),
        sa.Column("updated_at", when, nullable=False),
    )
    op.create_table(
        "series",
        sa.Column("pk", sa.Integer, primary_key=True),
        sa.Column("series_uid", uid, nullable=False, unique=True),
        sa.Column("study_pk", sa.Integer, sa.ForeignKey("studies.pk"), nullable=False),
        sa.Column("modality", sa.String(16), nullable=False),
        sa.Column("series_number", sa.Integer),
        sa.Column("series_description", sa.Text, nullable=False),
        sa.Column("body_part", sa.String(64), nullable=False),
        sa.Column("performed_date", sa.String(8), nullable=False),
        sa.Column("performed_time", sa.String(16), nullable=False),
    )
    op.create_table(
        "instances",
        sa.Column("pk", sa.Integer, primary_key=True),
        sa.Column("sop_uid", uid, nullable=False, unique=True),
        sa.Column("series_pk", sa.Integer, sa.ForeignKey("series.pk"), nullable=False),
        sa.Column("sop_class_uid", uid, nullable=False),
        sa.Column("instance_number", sa.Integer),
        sa.Column("transfer_syntax", uid, nullable=False),
        sa.Column("rows", sa.Integer),
        sa.Column("columns", sa.Integer),
        sa.Column("number_of_frames", sa.Integer),
        sa.Column("blob_key", sa.Text, nullable=False),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("frames", sa.Text),
        sa.Column("bulk", sa.Text),
        sa.Column("metadata", sa.LargeBinary, nullable=False),
        sa.Column("hospital_id", sa.String(64)),
        sa.Column("calling_ae", sa.String(16)),
        sa.Column("received_at", when, nullable=False),
    )
    op.create_index("ix_patients_patient_id", "patients", ["patient_id"])
    for column in ("name_alphabetic", "name_ideographic"):
        op.create_index(f"ix_patients_{column}", "patients", [column],
                        postgresql_ops={column: "text_pattern_ops"})
    op.create_index("ix_studies_patient_pk", "studies", ["patient_pk"])
    op.create_index("ix_studies_study_date", "studies", ["study_date"])
    op.create_index("ix_studies_accession_number", "studies", ["accession_number"])
    op.create_index("ix_series_study_pk", "series", ["study_pk"])
    op.create_index("ix_series_modality", "series", ["modality"])
    op.create_index("ix_instances_series", "instances", ["series_pk", "instance_number"])


def downgrade() -> None:
    for table in ("instances", "series", "studies", "patients"):
        op.drop_table(table)
