"""C-STORE SCP: a received instance goes straight into the one ingest path.

pynetdicom writes each incoming dataset to a file as it arrives
(``STORE_RECV_CHUNKED_DATASET``), so nothing is held in memory; the handler
hands that file to :meth:`archive.ingest.Ingest.ingest`, which moves it into
the archive. The response status is the ingest's (PS3.4 B.2.3).
"""

from __future__ import annotations

import logging

from pydicom.dataset import Dataset
from pynetdicom.events import Event

from archive.audit import AuditEvent, AuditTrail
from archive.config import Config
from archive.ingest import Ingest, IngestError, Source
from gateway.access import association_caller

log = logging.getLogger("huren.dimse")


def handle_store(event: Event, ingest: Ingest, config: Config, trail: AuditTrail) -> Dataset | int:
    """The ``EVT_C_STORE`` handler: archive the instance, answer with its status."""
    caller = association_caller(config, event.assoc)
    calling_ae = event.assoc.requestor.ae_title
    if caller is None:  # aborted on acceptance; a request racing the abort is refused
        return 0x0124  # Refused: Not Authorized (PS3.7 C.4)
    source = Source("dimse", caller.hospital_id, calling_ae)
    try:
        stored = ingest.ingest(event.dataset_path, source, check_meta=True)
    except IngestError as exc:
        trail.record(AuditEvent("store", "failure", caller, sop_uid=exc.sop_uid or None,
                                detail=f"0x{exc.failure.value:04X}"))
        log.warning("C-STORE refused: %s", exc, extra={
            "ae": calling_ae, "hospital": source.hospital_id, "sop": exc.sop_uid,
            "status": f"0x{exc.failure.value:04X}",
        })
        status = Dataset()
        status.Status = exc.failure.value
        status.ErrorComment = str(exc)[:64]
        return status
    trail.record(AuditEvent("store", "success", caller, study_uid=stored.study_uid,
                            series_uid=stored.series_uid, sop_uid=stored.sop_uid, detail=stored.outcome.value))
    return 0x0000
