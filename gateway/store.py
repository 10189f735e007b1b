"""C-STORE SCP: a received instance goes straight into the one ingest path.

Each incoming dataset is written to a file as it arrives, by
:class:`gateway.dimse.StoreDIMSE` (or by pynetdicom, ``STORE_RECV_CHUNKED_DATASET``,
for a request only it reads), so nothing is held in memory, and the file's
digests are taken from the bytes as they are written (:class:`DigestingFile`);
the handler hands that file and its digests to
:meth:`archive.ingest.Ingest.ingest`, which moves it into the archive without
reading it back to hash it. The response status is the ingest's (PS3.4 B.2.3).
"""

from __future__ import annotations

import logging
import tempfile
from collections import Counter
from typing import IO, Any

from pydicom.dataset import Dataset
from pynetdicom import dimse_messages
from pynetdicom.association import Association
from pynetdicom.events import Event

from archive.audit import AuditEvent, AuditTrail
from archive.config import Config
from archive.digests import Digests
from archive.ingest import Ingest, IngestError, Source
from gateway.access import association_caller

log = logging.getLogger("huren.dimse")


class DigestingFile:
    """The file pynetdicom writes a received data set to, hashing each write.

    The receiver (:class:`gateway.dimse.StoreDIMSE`, or pynetdicom) writes the
    preamble, the file meta information made from the C-STORE request, then each
    data set fragment as it arrives, and flushes through :attr:`file`; pynetdicom
    closes the file after the ``EVT_C_STORE`` handler.
    """

    def __init__(self, wrapped: Any) -> None:
        self._wrapped = wrapped
        self.name: str = wrapped.name
        self.file: IO[bytes] = wrapped.file
        self.digests = Digests()

    def write(self, data: bytes | bytearray | memoryview) -> int:
        self.digests.update(data)
        return self.file.write(data)

    def close(self) -> None:
        self._wrapped.close()


def _digesting_temporary_file(*args: Any, **kwargs: Any) -> DigestingFile:
    return DigestingFile(tempfile.NamedTemporaryFile(*args, **kwargs))


def digest_received_files() -> None:
    """Have pynetdicom write received data sets through :class:`DigestingFile`.

    pynetdicom opens that file in ``DIMSEMessage.decode_msg`` by its module's
    name for :func:`tempfile.NamedTemporaryFile`, with no hook of its own, so the
    name is pointed here for the whole process (as ``STORE_RECV_CHUNKED_DATASET``
    is a setting for the whole process); the file is made as before, in
    ``tempfile.tempdir`` (this process's receive folder).
    """
    dimse_messages.NamedTemporaryFile = _digesting_temporary_file  # type: ignore[attr-defined]


def received_digests(event: Event) -> tuple[str, str] | None:
    """The ``(file, data set)`` SHA-256 of the C-STORE data set file, taken as it was
    written, or ``None`` when it was not written through a :class:`DigestingFile`."""
    written = getattr(event.request, "_dataset_file", None)
    return written.digests.hexdigests() if isinstance(written, DigestingFile) else None


def handle_store(event: Event, ingest: Ingest, config: Config, trail: AuditTrail) -> Dataset | int:
    """The ``EVT_C_STORE`` handler: archive the instance, answer with its status."""
    caller = association_caller(config, event.assoc)
    calling_ae = event.assoc.requestor.ae_title
    if caller is None:  # aborted on acceptance; a request racing the abort is refused
        return 0x0124  # Refused: Not Authorized (PS3.7 C.4)
    source = Source("dimse", caller.hospital_id, calling_ae)
    counts = stored_counts(event.assoc)
    try:
        stored = ingest.ingest(event.dataset_path, source, check_meta=True, digests=received_digests(event))
    except IngestError as exc:
        trail.record(AuditEvent("store", "failure", caller, sop_uid=exc.sop_uid or None,
                                detail=f"0x{exc.failure.value:04X}"))
        log.warning("C-STORE refused: %s", exc, extra={
            "ae": calling_ae, "hospital": source.hospital_id, "sop": exc.sop_uid,
            "status": f"0x{exc.failure.value:04X}",
        })
        counts["refused"] += 1
        status = Dataset()
        status.Status = exc.failure.value
        status.ErrorComment = str(exc)[:64]
        return status
    trail.record(AuditEvent("store", "success", caller, study_uid=stored.study_uid,
                            series_uid=stored.series_uid, sop_uid=stored.sop_uid, detail=stored.outcome.value))
    counts[stored.outcome.value] += 1
    return 0x0000


def stored_counts(assoc: Association) -> Counter[str]:
    """What came of the association's C-STOREs so far, by outcome (``stored``,
    ``duplicate``, …, ``refused``), for its closing log line."""
    counts: Counter[str] | None = getattr(assoc, "huren_counts", None)
    if counts is None:
        counts = Counter()
        assoc.huren_counts = counts  # type: ignore[attr-defined]
    return counts
