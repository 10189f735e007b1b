"""Background work of a serving process: a daemon thread that does one turn of
some work every few seconds, and logs a failed turn instead of dying (an index
or store that is down now may answer at the next turn)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any


class Loop:
    """Calls `turn` every `interval` seconds in a daemon thread named `name`;
    with `at_start`, the first turn runs at once. Failures are logged to `log`
    with `fields`."""

    def __init__(self, name: str, turn: Callable[[], Any], interval: float, log: logging.Logger, *,
                 at_start: bool = False, fields: dict[str, Any] | None = None) -> None:
        self.name = name
        self.interval = interval
        self._turn = turn
        self._log = log
        self._at_start = at_start
        self._fields = fields or {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> Loop:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        if self._at_start:
            self._once()
        while not self._stop.wait(self.interval):
            self._once()

    def _once(self) -> None:
        try:
            self._turn()
        except Exception:
            self._log.exception("%s failed; trying again", self.name, extra=self._fields)
