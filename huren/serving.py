"""One serving process: the DICOM and HTTP doors over one archive, until SIGINT/SIGTERM.

Imported by ``huren serve`` before it forks its workers (``workers: N``), so that
the modules every worker runs are loaded once and their pages shared.
"""

from __future__ import annotations

import logging
import signal
import socket
import ssl
import tempfile
from pathlib import Path

import pydicom.config
import uvicorn

from archive.audit import AuditTrail
from archive.config import Config
from archive.guideline.compliance import Compliance
from archive.index.database import Database
from archive.ingest import Ingest
from archive.outbox import QueueingStore
from archive.receiving import ReceiveFolder
from archive.storage import open_store
from archive.sweep import Sweeper
from dicomweb import metrics
from dicomweb.app import build_app
from dicomweb.tls import CertifyingProtocol
from gateway import scp
from huren.judging import JudgingLoop
from huren.redrive import RedriveLoop
from huren.sweeping import SweepLoop

log = logging.getLogger("huren")


def serve(config: Config, spool: Path, db: Database, dimse_socket: socket.socket,
          http_socket: socket.socket, tls_door: tuple[socket.socket, ssl.SSLContext] | None,
          http_context: ssl.SSLContext | None) -> None:
    """Serve DICOM and HTTP on the listening sockets in this process until SIGINT/SIGTERM.

    `tls_door` is the DICOM-over-TLS socket and its context; `http_context` makes the HTTP door HTTPS.
    """
    # Objects are archived as received, valid or not: pydicom's check of each value it
    # converts or writes (a regular expression per UID, date, name…) would only warn, and
    # costs about a twentieth of the CPU per received instance.
    pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
    pydicom.config.settings.writing_validation_mode = pydicom.config.IGNORE
    ingest = Ingest(db, open_store(config), config.ingest.on_conflict, config.storage.queue)
    ingest.observers.append(metrics.observe)
    ingest.commits.observers.append(metrics.observe_commit)
    # Reads find objects in the outage queue until they are in the store.
    store = QueueingStore(ingest.outbox)
    redrive = RedriveLoop(ingest.outbox, config.storage.queue.redrive_interval).start() \
        if ingest.outbox.enabled else None
    compliance = Compliance(db, config)
    # Each process its own: the writer thread would not survive a fork.
    trail = AuditTrail(db, config.audit.syslog, config.dicom.ae_title)
    dimse = scp.start(config, ingest, trail, dimse_socket)
    dimse_tls = scp.start(config, ingest, trail, *tls_door) if tls_door else None
    # What this process receives (C-STORE data sets, STOW-RS parts) is written in its own folder.
    receiving = ReceiveFolder(spool)
    tempfile.tempdir = str(receiving.path)
    sweeping = SweepLoop(Sweeper(db, ingest.store, spool, receiving.path, upload_age=config.sweep.upload_age,
                                 orphan_grace=config.sweep.orphan_grace), config.sweep.interval).start()
    app = build_app(config, db, store, ingest, receiving.path, compliance, trail)
    judging = JudgingLoop(compliance, config.guideline.poll_interval).start() if config.rule_sets else None
    server = uvicorn.Server(uvicorn.Config(
        app, host=config.http.host, port=config.http.port, log_config=None,
        access_log=False, timeout_keep_alive=30,
        # The context the DICOM door uses too (TLS 1.2+, client certificates as configured).
        ssl_context_factory=(lambda _config, _default: http_context) if http_context else None,
        # Client certificates, where asked for, reach the app to name the hospital (dicomweb/tls.py).
        **({"http": CertifyingProtocol} if http_context and http_context.verify_mode != ssl.CERT_NONE else {}),
    ))
    log.info("DICOMweb listening", extra={"port": config.http.port, "root": config.http.dicomweb_root,
                                          "scheme": "https" if http_context else "http"})
    # uvicorn stops on SIGINT/SIGTERM, then raises the signal again for the handler
    # it found: a no-op one lets the DICOM side shut down after it.
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: None)
    try:
        server.run(sockets=[http_socket])
    finally:
        if judging is not None:
            judging.stop()
        if redrive is not None:
            redrive.stop()
        ingest.outbox.close()
        dimse.shutdown()
        if dimse_tls is not None:
            dimse_tls.shutdown()
        trail.close()
        sweeping.stop()
        receiving.close()
        db.dispose()
