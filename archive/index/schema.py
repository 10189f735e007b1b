"""The index tables: patient, study, series and instance.

Searchable attributes are columns, normalised for matching (person-name groups
upper-cased, numbers as integers). The instance row also keeps the instance's
DICOM JSON metadata and its pixel-data frame offsets, both made at ingest.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    false,
)

metadata = MetaData()

UID = String(64)

patients = Table(
    "patients", metadata,
    Column("pk", Integer, primary_key=True),
    Column("patient_id", String(64), nullable=False),
    # IssuerOfPatientID when sent, else the sending hospital: PatientIDs are
    # only unique within their issuer.
    Column("id_scope", String(128), nullable=False),
    Column("patient_name", Text, nullable=False),
    Column("name_alphabetic", Text, nullable=False),
    Column("name_ideographic", Text, nullable=False),
    Column("name_phonetic", Text, nullable=False),
    # The name in Hanyu Pinyin (archive.names.pinyin), for fuzzy matching: 王^小东 is WANG^XIAODONG.
    Column("name_pinyin", Text, nullable=False, server_default=""),
    Column("birth_date", String(8), nullable=False),
    Column("sex", String(16), nullable=False),
    UniqueConstraint("patient_id", "id_scope", name="uq_patients_id"),
)

studies = Table(
    "studies", metadata,
    Column("pk", Integer, primary_key=True),
    Column("study_uid", UID, nullable=False, unique=True),
    Column("patient_pk", ForeignKey("patients.pk"), nullable=False, index=True),
    Column("hospital_id", String(64), nullable=True),
    Column("study_date", String(8), nullable=False),
    Column("study_time", String(16), nullable=False),
    Column("accession_number", String(64), nullable=False),
    Column("study_id", String(16), nullable=False),
    Column("study_description", Text, nullable=False),
    Column("referring_physician", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    # Judging (archive.guideline.compliance): every archived instance bumps the
    # revision and sets judge_pending; a judgement records the revision it saw,
    # so an instance arriving mid-judgement leaves the study pending.
    Column("revision", Integer, nullable=False, server_default="0"),
    Column("judge_pending", Boolean, nullable=False, server_default=false()),
    Column("judged_revision", Integer, nullable=True),
    # A judging process's claim: until this time nobody else judges the study.
    Column("claimed_until", DateTime(timezone=True), nullable=True),
    Column("claimed_by", String(64), nullable=True),
    # The marks its current judgement gives it (archive.guideline.marks.recognition), on the row
    # itself so that the sharing policy tests each study without a look-up (archive.policy).
    Column("recognition", Text, nullable=True),
)

series = Table(
    "series", metadata,
    Column("pk", Integer, primary_key=True),
    Column("series_uid", UID, nullable=False, unique=True),
    Column("study_pk", ForeignKey("studies.pk"), nullable=False, index=True),
    Column("modality", String(16), nullable=False),
    Column("series_number", Integer, nullable=True),
    Column("series_description", Text, nullable=False),
    Column("body_part", String(64), nullable=False),
    Column("performed_date", String(8), nullable=False),
    Column("performed_time", String(16), nullable=False),
)

instances = Table(
    "instances", metadata,
    Column("pk", Integer, primary_key=True),
    Column("sop_uid", UID, nullable=False, unique=True),
    Column("series_pk", ForeignKey("series.pk"), nullable=False),
    Column("sop_class_uid", UID, nullable=False),
    Column("instance_number", Integer, nullable=True),
    Column("transfer_syntax", UID, nullable=False),
    Column("rows", Integer, nullable=True),
    Column("columns", Integer, nullable=True),
    Column("number_of_frames", Integer, nullable=True),
    Column("blob_key", Text, nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("sha256", String(64), nullable=False),
    # The data set's alone, after the file meta: the same instance sent by two doors.
    Column("dataset_sha256", String(64), nullable=True),
    # JSON: [[offset, length], ...] per frame, or null when not indexable.
    Column("frames", Text, nullable=True),
    # JSON: {"<tag path>": [offset, length]} for each value sent as a BulkDataURI.
    Column("bulk", Text, nullable=True),
    # The instance's DICOM JSON (PS3.18 F.2), bulk data as BulkDataURI.
    Column("metadata", LargeBinary, nullable=False),
    # JSON: the attributes the sharing guideline judges (archive.guideline.facts).
    Column("facts", LargeBinary, nullable=True),
    Column("hospital_id", String(64), nullable=True),
    Column("calling_ae", String(16), nullable=True),
    Column("received_at", DateTime(timezone=True), nullable=False),
)

# What a series was requested as: one row per distinct RequestAttributesSequence item of its
# instances, so QIDO-RS matches ``RequestAttributesSequence.RequestedProcedureID`` in SQL.
series_requests = Table(
    "series_requests", metadata,
    Column("pk", Integer, primary_key=True),
    Column("series_pk", ForeignKey("series.pk"), nullable=False, index=True),
    Column("requested_procedure_id", String(64), nullable=False),
    Column("scheduled_procedure_step_id", String(64), nullable=False),
    Column("accession_number", String(64), nullable=False),
    UniqueConstraint("series_pk", "requested_procedure_id", "scheduled_procedure_step_id", "accession_number",
                     name="uq_series_requests"),
)

# A compliance record: one rule set's judgement of a study. Re-judging adds a
# row and clears ``current`` on the one before, so the history is kept.
judgements = Table(
    "judgements", metadata,
    Column("pk", Integer, primary_key=True),
    Column("study_pk", ForeignKey("studies.pk"), nullable=False),
    Column("rule_set", String(64), nullable=False),
    Column("version", String(64), nullable=False),
    Column("verdict", String(16), nullable=False),
    # JSON: archive.guideline.judge.Judgement.to_json() plus each item's mark.
    Column("record", LargeBinary, nullable=False),
    Column("judged_at", DateTime(timezone=True), nullable=False),
    Column("current", Boolean, nullable=False),
)

# One row per exam item of each current judgement: what the recognition
# look-up and the quality pages search, so they never parse records.
item_results = Table(
    "item_results", metadata,
    Column("pk", Integer, primary_key=True),
    Column("judgement_pk", ForeignKey("judgements.pk"), nullable=False, index=True),
    Column("study_pk", ForeignKey("studies.pk"), nullable=False, index=True),
    Column("hospital_id", String(64), nullable=True),
    Column("rule_set", String(64), nullable=False),
    Column("item", String(64), nullable=False),
    Column("verdict", String(16), nullable=False),
    Column("mark", String(32), nullable=True),
    Column("study_date", String(8), nullable=False),
    # Space-separated rule ids of the item's failing findings.
    Column("failed_rules", Text, nullable=False),
    Column("judged_at", DateTime(timezone=True), nullable=False),
)

# Who a study's patient is, in every identifier it carries: PatientID with its
# issuer (or, without one, the sending hospital's scope) and each
# OtherPatientIDsSequence item that names its issuer (a resident ID number).
# The same person's studies at different hospitals share one of these.
study_identities = Table(
    "study_identities", metadata,
    Column("pk", Integer, primary_key=True),
    Column("study_pk", ForeignKey("studies.pk"), nullable=False, index=True),
    Column("patient_id", String(64), nullable=False),
    Column("issuer", String(128), nullable=False),
)

Index("ix_patients_patient_id", patients.c.patient_id)
Index("ix_patients_name_alphabetic", patients.c.name_alphabetic,
      postgresql_ops={"name_alphabetic": "text_pattern_ops"})
Index("ix_patients_name_ideographic", patients.c.name_ideographic,
      postgresql_ops={"name_ideographic": "text_pattern_ops"})
# With all four indexed, a name matched on any group (an OR) is an index search on both engines.
Index("ix_patients_name_phonetic", patients.c.name_phonetic, postgresql_ops={"name_phonetic": "text_pattern_ops"})
Index("ix_patients_name_pinyin", patients.c.name_pinyin, postgresql_ops={"name_pinyin": "text_pattern_ops"})
Index("ix_series_requests_procedure", series_requests.c.requested_procedure_id)
Index("ix_series_requests_step", series_requests.c.scheduled_procedure_step_id)
Index("ix_studies_study_date", studies.c.study_date)
Index("ix_studies_accession_number", studies.c.accession_number)
Index("ix_series_modality", series.c.modality)
Index("ix_instances_series", instances.c.series_pk, instances.c.instance_number)
Index("ix_studies_judge_pending", studies.c.judge_pending, studies.c.updated_at)
Index("ix_judgements_study", judgements.c.study_pk, judgements.c.current)
Index("ix_item_results_hospital", item_results.c.hospital_id, item_results.c.item)
Index("ix_study_identities_id", study_identities.c.patient_id, study_identities.c.issuer)

# Access: hospital API tokens (only their SHA-256 is kept), studies shared with
# another hospital for a consultation or referral, and the audit trail.
tokens = Table(
    "tokens", metadata,
    Column("pk", Integer, primary_key=True),
    # The public part of a token, shown in lists, logs and the audit trail.
    Column("token_id", String(32), nullable=False, unique=True),
    Column("secret_sha256", String(64), nullable=False),
    Column("hospital_id", String(64), nullable=True),
    Column("admin", Boolean, nullable=False),
    Column("label", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=True),
    Column("revoked_at", DateTime(timezone=True), nullable=True),
)

shares = Table(
    "shares", metadata,
    Column("pk", Integer, primary_key=True),
    Column("study_pk", ForeignKey("studies.pk"), nullable=False, index=True),
    Column("hospital_id", String(64), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False),
    Column("created_by", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("revoked_at", DateTime(timezone=True), nullable=True),
)

# Append-only: rows are inserted, never updated or deleted by Huren.
audit_events = Table(
    "audit_events", metadata,
    Column("pk", BigInteger().with_variant(Integer, "sqlite"), primary_key=True),
    Column("at", DateTime(timezone=True), nullable=False, index=True),
    Column("door", String(16), nullable=False),           # dimse, http, cli
    Column("action", String(32), nullable=False),         # store, query, retrieve, token, share, login
    Column("outcome", String(16), nullable=False),        # success, failure, denied
    Column("hospital_id", String(64), nullable=True),
    Column("actor", String(128), nullable=False),         # token id, OIDC subject, AE title, user
    Column("address", String(64), nullable=True),
    Column("study_uid", String(64), nullable=True),
    Column("series_uid", String(64), nullable=True),
    Column("sop_uid", String(64), nullable=True),
    Column("detail", Text, nullable=True),                # the query, the count, the status
)

# The deletion journal (archive.delete): objects whose index rows were removed and
# that are still to be deleted from the blob store.
deletions = Table(
    "deletions", metadata,
    Column("pk", Integer, primary_key=True),
    Column("blob_key", Text, nullable=False),
    Column("study_uid", UID, nullable=False),
    Column("requested_at", DateTime(timezone=True), nullable=False),
)

Index("ix_shares_hospital", shares.c.hospital_id, shares.c.study_pk)
# The outage queue (archive.outbox): an archived instance whose object is not yet
# in the blob store but in a local queue folder. A row here is what "not yet in
# the store" means; it is committed with the instance row, and deleted once the
# store has confirmed the upload (the queue file is removed after that).
queued_objects = Table(
    "queued_objects", metadata,
    Column("pk", Integer, primary_key=True),
    # The object's key in the store; the instance row has the same blob_key.
    Column("blob_key", Text, nullable=False, unique=True),
    # The queue file's name inside storage.queue.path on `host`; each version its own.
    Column("file", Text, nullable=False),
    # Which machine's queue folder holds the file (socket.gethostname()).
    Column("host", String(255), nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("queued_at", DateTime(timezone=True), nullable=False),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("last_error", Text, nullable=True),
    # A re-driving process's claim: until this time nobody else uploads the object.
    Column("claimed_until", DateTime(timezone=True), nullable=True),
    Column("claimed_by", String(64), nullable=True),
)

Index("ix_queued_objects_host", queued_objects.c.host, queued_objects.c.queued_at)
