"""``huren token create|list|revoke``: hospital API tokens for the HTTP door.

``create`` prints the token once, on stdout, so that it can be piped into a
secret store; the index keeps only its hash (:mod:`archive.tokens`), so a lost
token is revoked and replaced, never shown again. ``list`` never shows
secrets. Exit status 0 on success, 1 when ``revoke`` names no token, 2 for bad
usage (a hospital not in the configuration).
"""

from __future__ import annotations

import argparse
import datetime
import getpass
import sys
from typing import Any

from archive import tokens
from archive.audit import AuditEvent, AuditTrail
from archive.config import Config
from archive.index.database import Database
from archive.policy import Caller
from dicomweb.auth import CACHE_SECONDS


def add_parser(commands: Any) -> None:
    """Add ``token`` and its actions to `commands` (the ``huren`` subparsers)."""
    token = commands.add_parser("token", help="hospital API tokens for DICOMweb: create, list, revoke")
    actions = token.add_subparsers(dest="action", required=True)
    create = actions.add_parser("create", help="make a token; it is printed once")
    create.add_argument("--hospital", metavar="ID", help="the hospital it speaks for (a hospitals[].id)")
    create.add_argument("--admin", action="store_true", help="sees every study; needs no --hospital")
    create.add_argument("--expires", type=_days, metavar="DAYS", help="valid for DAYS days (default: until revoked)")
    create.add_argument("--label", default="", help="a note for the list: who holds it, what for")
    listing = actions.add_parser("list", help="every token, without secrets")
    revoke = actions.add_parser("revoke", help="stop a token from working")
    revoke.add_argument("token_id", metavar="TOKEN_ID", help="the id shown by `huren token list`")
    for action in (create, listing, revoke):
        action.add_argument("--config", default="conf/huren.yaml", help="YAML configuration file")


def run(args: argparse.Namespace, config: Config) -> int:
    """Run ``huren token <action>`` on the index `config` names; returns the exit status."""
    if args.action == "create":
        problem = _hospital_problem(args, config)
        if problem:
            print(f"huren: {problem}", file=sys.stderr)
            return 2
    db = Database(config.index.url, config.index.pool_size)
    try:
        db.migrate()
        if args.action == "create":
            return _create(db, args, config)
        if args.action == "list":
            return _list(db)
        if not tokens.revoke(db, args.token_id):
            print(f"huren: no token {args.token_id!r} (see huren token list)", file=sys.stderr)
            return 1
        _audit(db, config, f"revoked token {args.token_id}")
        print(f"huren: token {args.token_id} revoked; running servers refuse it within "
              f"{CACHE_SECONDS:g} seconds", file=sys.stderr)
        return 0
    finally:
        db.dispose()


def _hospital_problem(args: argparse.Namespace, config: Config) -> str | None:
    known = ", ".join(h.id for h in config.hospitals) or "none configured"
    if args.hospital is None and not args.admin:
        return f"token create needs --hospital ID (hospitals: {known}) or --admin"
    if args.hospital is not None and config.hospital(args.hospital) is None:
        return f"--hospital: {args.hospital!r} is not a configured hospital (hospitals: {known})"
    return None


def _create(db: Database, args: argparse.Namespace, config: Config) -> int:
    info, presented = tokens.create(db, hospital_id=args.hospital, admin=args.admin,
                                    expires_days=args.expires, label=args.label)
    print(presented)
    who = " ".join(filter(None, [info.hospital_id, "(admin)" if info.admin else None]))
    _audit(db, config, f"created token {info.token_id} for {who}")
    print(f"huren: token {info.token_id} for {who}, expires {_when(info.expires_at, 'never')}. "
          "Keep it now: it cannot be shown again.", file=sys.stderr)
    return 0


def _audit(db: Database, config: Config, detail: str) -> None:
    """Record a token change in the audit trail, as the user at the command line."""
    trail = AuditTrail(db, config.audit.syslog, config.dicom.ae_title)
    trail.record(AuditEvent("token", "success", Caller("cli", _user()), detail=detail))
    trail.close()


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # a container's uid without a passwd entry or $USER
        return "unknown"


def _list(db: Database) -> int:
    rows = [("ID", "HOSPITAL", "ADMIN", "LABEL", "CREATED", "EXPIRES", "REVOKED")]
    rows += [(info.token_id, info.hospital_id or "-", "yes" if info.admin else "no", info.label or "-",
              _when(info.created_at), _when(info.expires_at, "never"), _when(info.revoked_at))
             for info in tokens.list_tokens(db)]
    widths = [max(len(row[n]) for row in rows) for n in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    return 0


def _when(moment: datetime.datetime | None, absent: str = "-") -> str:
    return absent if moment is None else moment.strftime("%Y-%m-%d %H:%M UTC")


def _days(value: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of days, at least 1, not {value!r}")
    return int(value)
