"""The quiet-period loop: each serving process looks for studies that have
become quiet and judges those it can claim (claims go through the index, so
several processes or servers judge each study once)."""

from __future__ import annotations

import logging
import os
import socket

from archive.guideline.compliance import Compliance
from huren.loops import Loop

log = logging.getLogger("huren.guideline")


class JudgingLoop(Loop):
    """A daemon thread running :meth:`Compliance.run_due` every `interval` seconds."""

    def __init__(self, compliance: Compliance, interval: float) -> None:
        self.owner = f"{socket.gethostname()}:{os.getpid()}"
        super().__init__("judging", lambda: compliance.run_due(self.owner), interval, log,
                         fields={"owner": self.owner})
