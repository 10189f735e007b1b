"""The quiet-period loop: each serving process looks for studies that have
become quiet and judges those it can claim (claims go through the index, so
several processes or servers judge each study once)."""

from __future__ import annotations

import logging
import os
import socket
import threading

from archive.guideline.compliance import Compliance

log = logging.getLogger("huren.guideline")


class JudgingLoop:
    """A daemon thread running :meth:`Compliance.run_due` every `interval` seconds."""

    def __init__(self, compliance: Compliance, interval: float) -> None:
        self.compliance = compliance
        self.interval = interval
        self.owner = f"{socket.gethostname()}:{os.getpid()}"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="judging", daemon=True)

    def start(self) -> JudgingLoop:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.compliance.run_due(self.owner)
            except Exception:
                # An index that is down now may answer at the next turn.
                log.exception("judging failed; trying again", extra={"owner": self.owner})
