"""QIDO-RS matching on RequestAttributesSequence: each series' requested procedures.

Revision ID: 0007
Revises: 0006
"""

import orjson
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql, sqlite

from archive.header import request_attributes

revision = "0007"
down_revision = "0006"

BATCH = 1000  # instances read at a time


def upgrade() -> None:
    op.create_table(
        "series_requests",
        sa.Column("pk", sa.Integer, primary_key=True),
        sa.Column("series_pk", sa.Integer, sa.ForeignKey("series.pk"), nullable=False),
        sa.Column("requested_procedure_id", sa.String(64), nullable=False),
        sa.Column("scheduled_procedure_step_id", sa.String(64), nullable=False),
        sa.Column("accession_number", sa.String(64), nullable=False),
        sa.UniqueConstraint("series_pk", "requested_procedure_id", "scheduled_procedure_step_id",
                            "accession_number", name="uq_series_requests"),
    )
    op.create_index("ix_series_requests_series_pk", "series_requests", ["series_pk"])
    op.create_index("ix_series_requests_procedure", "series_requests", ["requested_procedure_id"])
    op.create_index("ix_series_requests_step", "series_requests", ["scheduled_procedure_step_id"])
    # Series already archived get theirs from their instances' stored metadata.
    connection = op.get_bind()
    instances = sa.table("instances", sa.column("pk", sa.Integer), sa.column("series_pk", sa.Integer),
                         sa.column("metadata", sa.LargeBinary))
    requests = sa.table("series_requests", *(sa.column(name) for name in (
        "series_pk", "requested_procedure_id", "scheduled_procedure_step_id", "accession_number")))
    dialect = sqlite if connection.dialect.name == "sqlite" else postgresql
    add = dialect.insert(requests).on_conflict_do_nothing()
    last = 0
    while rows := connection.execute(
        sa.select(instances.c.pk, instances.c.series_pk, instances.c.metadata).where(instances.c.pk > last)
        .order_by(instances.c.pk).limit(BATCH)
    ).all():
        found = [{"series_pk": series_pk, "requested_procedure_id": procedure,
                  "scheduled_procedure_step_id": step, "accession_number": accession}
                 for _pk, series_pk, document in rows
                 if b'"00400275"' in document
                 for procedure, step, accession in request_attributes(orjson.loads(document))]
        if found:
            connection.execute(add, found)
        last = rows[-1][0]


def downgrade() -> None:
    op.drop_table("series_requests")
