"""``huren serve --config FILE`` and ``huren check-config FILE``."""

from __future__ import annotations

import argparse
import errno
import logging
import signal
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

from archive.config import Config, ConfigError, load_config

if TYPE_CHECKING:
    from archive.index.database import Database

log = logging.getLogger("huren")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="huren", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the DIMSE listener and the DICOMweb server")
    serve.add_argument("--config", default="conf/huren.yaml", help="YAML configuration file")
    serve.add_argument("--log-level", default="INFO")
    check = commands.add_parser("check-config", help="validate a configuration file")
    check.add_argument("config")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config if args.command == "check-config" else args.config)
    except ConfigError as exc:
        print(f"huren: {exc}", file=sys.stderr)
        return 2
    if args.command == "check-config":
        print(f"{args.config}: OK ({config.storage.backend} storage, "
              f"{config.index.url.split(':', 1)[0]} index, {len(config.hospitals)} hospitals)")
        return 0
    try:
        return run(config, args.log_level)
    except OSError as exc:
        if exc.errno not in (errno.EADDRINUSE, errno.EACCES, errno.EADDRNOTAVAIL):
            raise
        print(f"huren: {exc.strerror}", file=sys.stderr)  # a port taken, privileged or not ours
        return 1


def run(config: Config, log_level: str = "INFO") -> int:
    """Open the archive, start both doors, and serve until SIGINT/SIGTERM."""
    from archive.index.database import Database
    from huren import logs, workers

    logs.setup(log_level)
    spool = config.ingest.spool.resolve()
    spool.mkdir(parents=True, exist_ok=True)
    _sweep(spool)
    # Received C-STORE data and STOW parts are spooled here, next to the archive.
    tempfile.tempdir = str(spool)
    db = Database(config.index.url, config.index.pool_size)
    db.migrate()
    dimse_socket = workers.listen(config.dicom.host, config.dicom.port, "DICOM")
    http_socket = workers.listen(config.http.host, config.http.port, "HTTP")
    if config.workers == 1:
        _serve(config, spool, db, dimse_socket, http_socket)
        return 0
    db.dispose()  # each worker opens its own connections
    return workers.supervise(config.workers, lambda _slot: _serve(
        config, spool, Database(config.index.url, config.index.pool_size), dimse_socket, http_socket,
    ))


def _serve(config: Config, spool: Path, db: "Database", dimse_socket: socket.socket,
           http_socket: socket.socket) -> None:
    """Serve DICOM and HTTP on the listening sockets in this process until SIGINT/SIGTERM."""
    import uvicorn

    from archive.ingest import Ingest
    from archive.storage import open_store
    from dicomweb.app import build_app
    from gateway import scp

    store = open_store(config)
    ingest = Ingest(db, store, config.ingest.on_conflict)
    dimse = scp.start(config, ingest, dimse_socket)
    app = build_app(config, db, store, ingest, spool)
    server = uvicorn.Server(uvicorn.Config(
        app, host=config.http.host, port=config.http.port, log_config=None,
        access_log=False, timeout_keep_alive=30,
    ))
    log.info("DICOMweb listening", extra={"port": config.http.port, "root": config.http.dicomweb_root})
    # uvicorn stops on SIGINT/SIGTERM, then raises the signal again for the handler
    # it found: a no-op one lets the DICOM side shut down after it.
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: None)
    try:
        server.run(sockets=[http_socket])
    finally:
        dimse.shutdown()
        db.dispose()


def _sweep(spool: Path, older_than: float = 3600.0) -> None:
    """Remove spooled files left by a crash (never acknowledged, so the sender will resend)."""
    cutoff = time.time() - older_than
    for path in spool.iterdir():
        if path.is_file() and path.stat().st_mtime < cutoff:
            path.unlink(missing_ok=True)
