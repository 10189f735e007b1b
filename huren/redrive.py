"""The re-driver: each serving process uploads what its machine's outage queue
holds once the blob store answers again (claims go through the index, so each
queued object is uploaded by one process)."""

from __future__ import annotations

import logging
import os
import socket
import threading

from archive.outbox import Outbox

log = logging.getLogger("huren.queue")


class RedriveLoop:
    """A daemon thread running :meth:`Outbox.redrive` every `interval` seconds
    (and again at once while a turn found more than it could take)."""

    def __init__(self, outbox: Outbox, interval: float, batch: int = 100) -> None:
        self.outbox = outbox
        self.interval = interval
        self.batch = batch
        self.owner = f"{socket.gethostname()}:{os.getpid()}"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="redrive", daemon=True)

    def start(self) -> RedriveLoop:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        try:
            self.outbox.sweep()
        except Exception:
            log.exception("queue sweep failed", extra={"owner": self.owner})
        wait = 0.0
        while not self._stop.wait(wait):
            try:
                done = self.outbox.redrive(self.owner, self.batch)
            except Exception:
                # An index that is down now may answer at the next turn.
                log.exception("re-drive failed; trying again", extra={"owner": self.owner})
                done = 0
            wait = 0.0 if done == self.batch else self.interval
