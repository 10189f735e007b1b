"""The re-driver: each serving process uploads what its machine's outage queue
holds once the blob store answers again (claims go through the index, so each
queued object is uploaded by one process)."""

from __future__ import annotations

import logging
import os
import socket
import time

from archive.outbox import Outbox
from huren.loops import Loop

log = logging.getLogger("huren.queue")
SWEEP_INTERVAL = 3600.0  # seconds between tidyings of the queue folder (the first at start)


class RedriveLoop(Loop):
    """A daemon thread that, every `interval` seconds and once at start (a restart
    finds what the queue kept), uploads queued objects in batches of `batch` for as
    long as batches come back full; at start and hourly it tidies the queue folder
    (:meth:`Outbox.sweep`)."""

    def __init__(self, outbox: Outbox, interval: float, batch: int = 100) -> None:
        self.owner = f"{socket.gethostname()}:{os.getpid()}"
        self.outbox = outbox
        self.batch = batch
        self._next_sweep = 0.0
        super().__init__("redrive", self._turn, interval, log, at_start=True, fields={"owner": self.owner})

    def _turn(self) -> None:
        if time.monotonic() >= self._next_sweep:
            self.outbox.sweep()
            self._next_sweep = time.monotonic() + SWEEP_INTERVAL
        while self.outbox.redrive(self.owner, self.batch) == self.batch:
            pass
