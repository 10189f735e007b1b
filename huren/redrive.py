"""The re-driver: each serving process uploads what its machine's outage queue
holds once the blob store answers again (claims go through the index, so each
queued object is uploaded by one process)."""

from __future__ import annotations

import logging
import os
import socket

from archive.outbox import Outbox
from huren.loops import Loop

log = logging.getLogger("huren.queue")


class RedriveLoop(Loop):
    """A daemon thread that, every `interval` seconds and once at start (a restart
    finds what the queue kept), removes queue files left without a row and uploads
    queued objects in batches of `batch` for as long as batches come back full."""

    def __init__(self, outbox: Outbox, interval: float, batch: int = 100) -> None:
        self.owner = f"{socket.gethostname()}:{os.getpid()}"
        self.outbox = outbox
        self.batch = batch
        super().__init__("redrive", self._turn, interval, log, at_start=True, fields={"owner": self.owner})

    def _turn(self) -> None:
        self.outbox.sweep()
        while self.outbox.redrive(self.owner, self.batch) == self.batch:
            pass
