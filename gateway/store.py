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

from archive.config import Config
from archive.ingest import Ingest, IngestError, Source
from gateway.access import hospital_of

log = logging.getLogger("huren.dimse")


def handle_store(event: Event, ingest: Ingest, config: Config) -> Dataset | int:
    """The ``EVT_C_STORE`` handler: archive the instance, answer with its status."""
    calling_ae = event.assoc.requestor.ae_title
    source = Source("dimse", hospital_of(config, calling_ae), calling_ae)
    try:
        ingest.ingest(event.dataset_path, source, check_meta=True)
    except IngestError as exc:
        log.warning("C-STORE refused: %s", exc, extra={
            "ae": calling_ae, "hospital": source.hospital_id, "sop": exc.sop_uid,
            "status": f"0x{exc.failure.value:04X}",
        })
        status = Dataset()
        status.Status = exc.failure.value
        status.ErrorComment = str(exc)[:64]
        return status
    return 0x0000
