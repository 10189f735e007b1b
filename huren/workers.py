"""Several serving processes on one pair of listening sockets (``workers: N``).

Python runs Huren's code on one core per process, so one process cannot keep
a multi-core machine busy when several modalities send at once. The parent
binds the DICOM and HTTP sockets once and forks N workers that all accept on
them: the kernel gives each new association or HTTP connection to whichever
worker takes it first. Workers share nothing but the index and the blob store,
as separate Huren servers would (design: scale-out). The parent only
supervises: it restarts a worker that dies and stops them all on SIGTERM or
SIGINT; a worker whose parent is gone stops by itself.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable

log = logging.getLogger("huren")

RESTART_DELAY = 1.0  # seconds before a dead worker is replaced, so a crash loop cannot spin


def listen(host: str, port: int, what: str) -> socket.socket:
    """A listening TCP socket for the serving process, or for all its forked workers.

    Non-blocking, so a worker that loses the race for a connection goes back
    to waiting instead of blocking in ``accept``. The protocol is named, not
    left 0: asyncio turns Nagle's algorithm off only on sockets that say TCP,
    and without that every HTTP answer on a kept-alive connection waits ~40 ms.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)  # room for a burst of modalities or viewers connecting at once
    except OSError as exc:
        sock.close()
        raise OSError(exc.errno, f"cannot listen for {what} on {host}:{port}: {exc.strerror}") from None
    sock.setblocking(False)
    return sock


def supervise(count: int, serve: Callable[[int], None]) -> int:
    """Fork `count` workers running ``serve(slot)`` and keep them running until told to stop.

    Returns the exit status for the ``huren`` command: 0 after SIGTERM/SIGINT.
    """
    children: dict[int, int] = {}  # pid -> slot
    stopping = False

    def stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        for pid in children:
            _signal(pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for slot in range(count):
        children[_spawn(slot, serve)] = slot
    log.info("workers started", extra={"workers": count, "pids": sorted(children)})
    while children:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        slot = children.pop(pid, None)
        if slot is None or stopping:
            continue
        log.error("worker exited; starting another", extra={
            "pid": pid, "status": os.waitstatus_to_exitcode(status), "slot": slot,
        })
        time.sleep(RESTART_DELAY)
        if not stopping:
            children[_spawn(slot, serve)] = slot
    return 0


def _spawn(slot: int, serve: Callable[[int], None]) -> int:
    parent = os.getpid()
    pid = os.fork()
    if pid:
        return pid
    # The worker: the parent's signal handlers are not its own.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    threading.Thread(target=_follow, args=(parent,), name="parent-watch", daemon=True).start()
    status = 1
    try:
        serve(slot)
        status = 0
    except BaseException:
        log.exception("worker failed", extra={"slot": slot})
    finally:
        logging.shutdown()
        os._exit(status)


def _follow(parent: int) -> None:
    """Stop this worker when its parent is gone (killed with SIGKILL, say)."""
    while os.getppid() == parent:
        time.sleep(1.0)
    os.kill(os.getpid(), signal.SIGTERM)


def _signal(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass
