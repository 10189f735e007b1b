"""``huren serve --config FILE`` and ``huren check-config FILE``."""

from __future__ import annotations

import argparse
import errno
import gc
import ipaddress
import logging
import os
import sys
from typing import TYPE_CHECKING

from archive.config import Config, ConfigError, config_with_rule_sets, load_config
from archive.receiving import ReceiveFolder, sweep_receive
from archive.tls import server_context
from huren import audit, connections, delete, tokens, verify

if TYPE_CHECKING:
    from archive.index.database import Database

log = logging.getLogger("huren")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="huren", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the DIMSE listener and the DICOMweb server")
    serve.add_argument("--config", default="conf/huren.yaml", help="YAML configuration file")
    serve.add_argument("--log-level", default="INFO")
    check_config = commands.add_parser("check-config", help="validate a configuration file")
    check_config.add_argument("config")
    check_config.add_argument("--connect", action="store_true",
                              help="also check that the index and the blob store answer")
    rules = commands.add_parser("guideline", help="the sharing guideline: check files, rejudge")
    actions = rules.add_subparsers(dest="action", required=True)
    judge = actions.add_parser("check", help="judge local DICOM files or folders, no server needed")
    judge.add_argument("paths", nargs="+", metavar="PATH")
    judge.add_argument("--config", default="conf/huren.yaml",
                       help="configuration naming the rule sets (guideline.rule_sets)")
    judge.add_argument("--rules", nargs="+", metavar="FILE", help="rule set files instead")
    judge.add_argument("--json", action="store_true", help="print JSON for machines")
    judge.add_argument("--lang", choices=("zh", "en"), default="zh")
    rejudge = actions.add_parser("rejudge", help="re-judge every stored study after a rule edit")
    rejudge.add_argument("--config", default="conf/huren.yaml", help="YAML configuration file")
    tokens.add_parser(commands)
    audit.add_parser(commands)
    delete.add_parser(commands)
    verify.add_parser(commands)
    args = parser.parse_args(argv)
    try:
        if args.command == "guideline" and args.action == "check" and args.rules:
            config = config_with_rule_sets(Config(guideline={"rule_sets": args.rules}))
        else:
            config = load_config(args.config)
        if args.command == "check-config":  # the certificates and keys load, not only exist
            for tls in (config.http.tls, config.dicom.tls):
                if tls is not None:
                    server_context(tls)
    except ConfigError as exc:
        print(f"huren: {exc}", file=sys.stderr)
        return 2
    if args.command == "check-config" and args.connect:
        from archive.index.database import Database

        db = Database.open(config.index)
        found = connections.problems(config, db)
        db.dispose()
        for problem in found:
            print(f"huren: {problem}", file=sys.stderr)
        if found:
            return 2
    if args.command == "token":
        return tokens.run(args, config)
    if args.command == "audit":
        return audit.run(args, config)
    if args.command == "delete":
        return delete.run(args, config)
    if args.command in ("verify", "repair", "reindex"):
        return verify.run(args, config)
    if args.command == "guideline":
        from huren import guideline

        if args.action == "rejudge":
            return guideline.rejudge(config)
        if not config.rule_sets:
            print(f"huren: {args.config} names no rule sets (guideline.rule_sets); use --rules FILE",
                  file=sys.stderr)
            return 2
        return guideline.check(args.paths, config.rule_sets, as_json=args.json, lang=args.lang)
    if args.command == "check-config":
        print(f"{args.config}: OK ({config.storage.backend} storage, "
              f"{config.index.url.split(':', 1)[0]} index, {len(config.hospitals)} hospitals, "
              f"rule sets: {', '.join(f'{r.id} ({len(r.items)} items)' for r in config.rule_sets) or 'none'})")
        return 0
    try:
        return run(config, args.log_level)
    except ConfigError as exc:  # a certificate or key that cannot be used
        print(f"huren: {exc}", file=sys.stderr)
        return 2
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
    if not config.access_enforced:
        if not _loopback(config.http.host):
            print(f"huren: DICOMweb would listen on {config.http.host} with no access control: "
                  "configure hospitals (and create their tokens with `huren token create`) or "
                  "access.oidc, or set http.host to 127.0.0.1", file=sys.stderr)
            return 2
        log.warning("access is open: no hospitals or access.oidc are configured, so every "
                    "caller on this machine may read and store every study",
                    extra={"host": config.http.host})
    # Certificates and keys are loaded before anything is bound or written, so a
    # wrong one stops the start here, named.
    http_context = server_context(config.http.tls) if config.http.tls else None
    dicom_context = server_context(config.dicom.tls) if config.dicom.tls else None
    spool = config.ingest.receive_folder.resolve()
    spool.mkdir(parents=True, exist_ok=True)
    # Each process receives into a folder of its own (archive.receiving); those of ended processes go.
    sweep_receive(spool)
    db = Database.open(config.index)
    if found := connections.problems(config, db):
        for problem in found:
            print(f"huren: {problem}", file=sys.stderr)
        return 2
    _finish_deletions(config, db)
    dimse_socket = workers.listen(config.dicom.host, config.dicom.port, "DICOM")
    http_socket = workers.listen(config.http.host, config.http.port, "HTTP")
    # DICOM over TLS is served on a port of its own, beside the plain one.
    tls_door = None
    if config.dicom.tls is not None:
        tls_door = (workers.listen(config.dicom.host, config.dicom.tls.port, "DICOM over TLS"), dicom_context)
    # One folder for every process's metrics (dicomweb.metrics), named before any metric exists.
    metrics_folder = ReceiveFolder(spool, kind="metrics")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_folder.path)
    # Loaded here, before any fork: the workers share these modules' pages.
    from huren.serving import serve
    try:
        if config.worker_count == 1:
            serve(config, spool, db, dimse_socket, http_socket, tls_door, http_context)
            return 0
        db.dispose()  # each worker opens its own connections
        # Objects loaded so far are never collected: the collector would write to (and so
        # copy) every worker's shared pages of them.
        gc.freeze()
        return workers.supervise(config.worker_count, lambda _slot: serve(
            config, spool, Database.open(config.index), dimse_socket, http_socket,
            tls_door, http_context,
        ))
    finally:
        metrics_folder.close()


def _finish_deletions(config: Config, db: Database) -> None:
    """Delete the objects of deletions a crash interrupted (archive.delete), before
    anything serves or sweeps: their rows are gone, so they must not be adopted."""
    from archive.delete import Deleter
    from archive.storage import open_store

    try:
        cleared = Deleter(db, open_store(config)).resume()
    except Exception as exc:  # the journal keeps them; the next deletion or start tries again
        log.warning("interrupted deletions left for later", extra={"error": str(exc)})
        return
    if cleared:
        log.info("interrupted deletions finished", extra={"objects": cleared})


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"
