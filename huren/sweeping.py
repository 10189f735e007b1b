"""The sweep loop: at start and every ``sweep.interval`` seconds, a serving
process clears what crashes leave behind (:class:`archive.sweep.Sweeper`;
one process at a time sweeps)."""

from __future__ import annotations

import logging

from archive.sweep import Sweeper
from huren.loops import Loop

log = logging.getLogger("huren.sweep")


class SweepLoop(Loop):
    """A daemon thread running :meth:`Sweeper.run` now and then every `interval` seconds."""

    def __init__(self, sweeper: Sweeper, interval: float) -> None:
        super().__init__("sweep", sweeper.run, interval, log, at_start=True)
