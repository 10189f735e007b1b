"""Hospital API tokens (archive/tokens.py) and ``huren token`` (huren/tokens.py), on SQLite and PostgreSQL."""

from __future__ import annotations

import argparse
import datetime
import hashlib
import re

import pytest
from sqlalchemy import select, update

from archive import tokens
from archive.config import Config
from archive.index.database import Database
from archive.index.schema import tokens as table
from huren import tokens as command

NOW = datetime.datetime.now(datetime.UTC)


@pytest.fixture
def db(index_url: str):
    database = Database(index_url)
    database.migrate()
    yield database
    database.dispose()


def test_create_keeps_only_the_hash(db: Database) -> None:
    info, presented = tokens.create(db, hospital_id="bj-a", admin=False, expires_days=30, label="PACS")
    assert re.fullmatch(r"huren_[0-9a-f]{16}_[0-9a-f]{64}", presented)
    assert presented.split("_")[1] == info.token_id
    assert (info.hospital_id, info.admin, info.label) == ("bj-a", False, "PACS")
    assert info.expires_at - info.created_at == datetime.timedelta(days=30)
    with db.reading() as conn:
        row = conn.execute(select(table)).one()
    assert row.secret_sha256 == hashlib.sha256(presented.encode()).hexdigest()
    secret = presented.split("_")[2]
    assert not any(secret in str(value) for value in row)


def test_verify(db: Database) -> None:
    info, presented = tokens.create(db, hospital_id="bj-a", admin=False, expires_days=None)
    assert tokens.verify(db, presented, NOW) == info
    secret = presented.split("_")[2]
    last_digit_changed = presented[:-1] + ("1" if presented.endswith("0") else "0")
    for bad in (last_digit_changed, f"huren_{'f' * 16}_{secret}", presented[:-1], presented + "0", "",
                presented.upper(), "Bearer " + presented):
        assert tokens.verify(db, bad, NOW) is None, bad


def test_hashes_are_compared_in_constant_time(db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    _, presented = tokens.create(db, hospital_id="bj-a", admin=False, expires_days=None)
    compared = []
    real = tokens.hmac.compare_digest

    def spy(a: str, b: str) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(tokens.hmac, "compare_digest", spy)
    assert tokens.verify(db, presented, NOW) is not None
    assert compared == [(tokens.digest(presented), tokens.digest(presented))]


def test_expired_and_revoked_tokens_are_refused(db: Database) -> None:
    info, presented = tokens.create(db, hospital_id="bj-a", admin=False, expires_days=1)
    assert tokens.verify(db, presented, info.expires_at - datetime.timedelta(seconds=1)) is not None
    assert tokens.verify(db, presented, info.expires_at) is None
    assert tokens.revoke(db, info.token_id)
    assert tokens.verify(db, presented, NOW) is None
    [revoked] = tokens.list_tokens(db)
    assert revoked.revoked_at is not None and not revoked.valid_at(NOW)
    assert tokens.revoke(db, info.token_id)  # again: still revoked, first time kept
    assert tokens.list_tokens(db)[0].revoked_at == revoked.revoked_at
    assert not tokens.revoke(db, "0" * 16)


def test_a_token_needs_a_hospital_unless_admin(db: Database) -> None:
    with pytest.raises(ValueError, match="needs a hospital"):
        tokens.create(db, hospital_id=None, admin=False, expires_days=None)
    with pytest.raises(ValueError, match="at least 1"):
        tokens.create(db, hospital_id="bj-a", admin=False, expires_days=0)
    info, presented = tokens.create(db, hospital_id=None, admin=True, expires_days=None)
    assert tokens.verify(db, presented, NOW) == info and info.admin and info.hospital_id is None


def test_list_in_creation_order_with_times_in_utc(db: Database) -> None:
    made = [tokens.create(db, hospital_id=h, admin=h is None, expires_days=None, label=f"t{n}")[0]
            for n, h in enumerate(["bj-a", None, "tj-b"])]
    listed = tokens.list_tokens(db)
    assert listed == made
    assert all(info.created_at.tzinfo == datetime.UTC for info in listed)


# The command line.

def config_for(index_url: str) -> Config:
    return Config.model_validate({
        "index": {"url": index_url},
        "hospitals": [{"id": "bj-a", "name": "北京甲医院"}, {"id": "tj-b", "name": "天津乙医院"}],
    })


def huren_token(config: Config, *argv: str) -> int:
    """``huren token ARGV…`` through the parser the command adds."""
    parser = argparse.ArgumentParser(prog="huren")
    command.add_parser(parser.add_subparsers(dest="command", required=True))
    return command.run(parser.parse_args(["token", *argv]), config)


def test_cli_create_list_revoke(index_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    config = config_for(index_url)
    assert huren_token(config, "create", "--hospital", "bj-a", "--expires", "90", "--label", "bj-a PACS") == 0
    out, err = capsys.readouterr()
    presented = out.strip()
    token_id = presented.split("_")[1]
    assert re.fullmatch(r"huren_[0-9a-f]{16}_[0-9a-f]{64}", presented)
    assert token_id in err and "cannot be shown again" in err and presented not in err
    assert huren_token(config, "create", "--admin", "--label", "ops") == 0
    admin_token = capsys.readouterr().out.strip()

    assert huren_token(config, "list") == 0
    listing = capsys.readouterr().out
    header, first, second = listing.splitlines()
    assert header.split() == ["ID", "HOSPITAL", "ADMIN", "LABEL", "CREATED", "EXPIRES", "REVOKED"]
    assert first.startswith(token_id) and "bj-a PACS" in first and first.endswith("-")
    assert second.split()[1:4] == ["-", "yes", "ops"] and "never" in second
    for secret in (presented, admin_token):
        assert secret.split("_")[2] not in listing

    assert huren_token(config, "revoke", token_id) == 0
    assert "revoked" in capsys.readouterr().err
    assert huren_token(config, "list") == 0
    assert capsys.readouterr().out.splitlines()[1].endswith("UTC")
    db = Database(index_url)
    try:
        assert tokens.verify(db, presented, NOW) is None
        assert tokens.verify(db, admin_token, NOW) is not None
    finally:
        db.dispose()
    assert huren_token(config, "revoke", "0123456789abcdef") == 1
    assert "no token" in capsys.readouterr().err


def test_cli_refuses_unknown_or_missing_hospital(index_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    config = config_for(index_url)
    assert huren_token(config, "create", "--hospital", "sh-x") == 2
    err = capsys.readouterr().err
    assert "'sh-x' is not a configured hospital" in err and "bj-a, tj-b" in err
    assert huren_token(config, "create") == 2
    assert "--hospital ID" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        huren_token(config, "create", "--hospital", "bj-a", "--expires", "0")
    assert exit_.value.code == 2 and "at least 1" in capsys.readouterr().err
    db = Database(config.index.url)
    try:
        db.migrate()
        assert tokens.list_tokens(db) == []
    finally:
        db.dispose()


def test_expired_tokens_list_their_expiry(db: Database, index_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    tokens.create(db, hospital_id="tj-b", admin=False, expires_days=1)
    with db.writing() as conn:
        conn.execute(update(table).values(expires_at=NOW - datetime.timedelta(days=1)))
    assert huren_token(config_for(index_url), "list") == 0
    line = capsys.readouterr().out.splitlines()[1]
    assert (NOW - datetime.timedelta(days=1)).strftime("%Y-%m-%d") in line
