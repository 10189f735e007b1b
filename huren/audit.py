"""``huren audit export``: a period of the audit trail as DICOM audit messages.

The messages (PS3.15 A.5) go out as one XML document, ``<AuditMessages>``
holding one ``<AuditMessage>`` a line, to standard output or a file; or, with
``--syslog``, to the configured audit record repository, as Huren sends them
while serving (for one that was unreachable then, or joined later).
"""

from __future__ import annotations

import argparse
import datetime
import re
import sys
from typing import TextIO

from archive.config import Config

_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Add ``audit export`` to the ``huren`` command's subcommands."""
    audit = commands.add_parser("audit", help="the audit trail: export it for review")
    actions = audit.add_subparsers(dest="action", required=True)
    export = actions.add_parser("export", help="write a period's audit messages (DICOM PS3.15 A.5)")
    export.add_argument("--since", required=True, metavar="DATE",
                        help="from this day (YYYY-MM-DD) or moment (ISO 8601); local time unless it says")
    export.add_argument("--until", metavar="DATE",
                        help="up to and including this day, or up to this moment (default: now)")
    target = export.add_mutually_exclusive_group()
    target.add_argument("--output", metavar="FILE", help="write the XML here instead of standard output")
    target.add_argument("--syslog", action="store_true",
                        help="send each message to audit.syslog instead of writing XML")
    export.add_argument("--config", default="conf/huren.yaml", help="YAML configuration file")


def run(args: argparse.Namespace, config: Config) -> int:
    """Run ``huren audit export``; returns the exit status.

    0 when every message was written or sent; 1 when the syslog host could
    not be reached; 2 for a date that cannot be read, an empty period, or
    ``--syslog`` without ``audit.syslog`` configured.
    """
    from tqdm import tqdm

    from archive.audit import atna_message, events
    from archive.index.database import Database
    from archive.syslog import SyslogSender

    try:
        since = _moment(args.since, "--since", end=False)
        until = _moment(args.until, "--until", end=True) if args.until else None
    except ValueError as exc:
        print(f"huren: {exc}", file=sys.stderr)
        return 2
    if until is not None and until <= since:
        print(f"huren: --until {args.until} is not after --since {args.since}", file=sys.stderr)
        return 2
    if args.syslog and config.audit.syslog is None:
        print(f"huren: --syslog: {args.config} configures no audit.syslog host", file=sys.stderr)
        return 2

    db = Database(config.index.url, config.index.pool_size)
    db.migrate()
    sender = SyslogSender(config.audit.syslog) if args.syslog else None
    output: TextIO = open(args.output, "w", encoding="utf-8") if args.output else sys.stdout
    # A count on standard error, shown when it is a terminal: exports can be long.
    bar = tqdm(unit=" messages", desc="exporting", file=sys.stderr, disable=None)
    count = 0
    try:
        if sender is None:
            output.write('<?xml version="1.0" encoding="UTF-8"?>\n<AuditMessages>\n')
        for event in events(db, since, until):
            message = atna_message(event, config.dicom.ae_title)
            if sender is None:
                output.write(message + "\n")
            else:
                try:
                    sender.send(event, message)
                except OSError as exc:
                    print(f"huren: syslog {config.audit.syslog.host}:{config.audit.syslog.port}: "
                          f"{exc.strerror or exc}; {count} messages were sent", file=sys.stderr)
                    return 1
            count += 1
            bar.update()
        if sender is None:
            output.write("</AuditMessages>\n")
    finally:
        bar.close()
        if sender is not None:
            sender.close()
        if output is not sys.stdout:
            output.close()
        db.dispose()
    if sender is not None:
        print(f"huren: {count} audit messages sent to {config.audit.syslog.host}", file=sys.stderr)
    else:
        print(f"huren: {count} audit messages written to {args.output or 'standard output'}", file=sys.stderr)
    return 0


def _moment(text: str, option: str, *, end: bool) -> datetime.datetime:
    """A day or an ISO 8601 moment; a day ends at the next midnight when `end`.

    A moment without a UTC offset is local time, as the operator reads clocks.

    Raises
    ------
    ValueError
        Naming `option`, when `text` is neither.
    """
    problem = f"{option}: {text!r} is not a date (YYYY-MM-DD) or an ISO 8601 date and time"
    try:
        if _DATE.fullmatch(text):
            day = datetime.date.fromisoformat(text)
            moment = datetime.datetime.combine(day + datetime.timedelta(days=1 if end else 0), datetime.time())
        elif text.isascii() and text[:1].isdigit():
            moment = datetime.datetime.fromisoformat(text)
        else:
            raise ValueError(problem)
    except ValueError:
        raise ValueError(problem) from None
    return moment if moment.tzinfo is not None else moment.astimezone()
