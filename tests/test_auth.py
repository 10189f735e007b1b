"""Who is calling over HTTP (dicomweb/auth.py): Huren tokens and OIDC access tokens, on the real app.

Each request kind of the app is tried without a token, with bad ones and with
good ones; ``/test/caller``, a route added here, answers the caller the
middleware set, as every handler sees it in ``request.state.caller``.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import hashlib
import hmac
import http.server
import json
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from sqlalchemy import select, update
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from archive import tokens
from archive.config import Config
from archive.guideline.compliance import Compliance
from archive.index.schema import audit_events
from archive.index.schema import tokens as token_table
from dicomweb import auth
from dicomweb.app import build_app
from dicomweb.auth import Authentication
from tests.conftest import Archive, audit_trail, free_port

HOSPITALS = [{"id": "bj-a", "name": "北京甲医院"}, {"id": "tj-b", "name": "天津乙医院"}]
ISSUER = "https://idp.example/realms/huren"
AUDIENCE = "huren-dicomweb"
STOW_TYPE = 'multipart/related; type="application/dicom"; boundary=b0undary'
# Every kind of request the app answers, each with whatever a valid caller needs to get past the door.
REQUESTS = [
    ("GET", "/dicom-web/studies", {}, None),
    ("GET", "/dicom-web/series?Modality=CT", {}, None),
    ("GET", "/dicom-web/studies/1.2.3", {}, None),
    ("GET", "/dicom-web/studies/1.2.3/series/1.2.3.4/metadata", {}, None),
    ("GET", "/dicom-web/studies/1.2.3/series/1.2.3.4/instances/1.2.3.4.5/frames/1", {}, None),
    ("POST", "/dicom-web/studies", {"Content-Type": STOW_TYPE}, b"--b0undary--\r\n"),
    ("GET", "/api/recognition?patient_id=P1&issuer=CN-RESIDENT-ID", {}, None),
    ("POST", "/api/studies/1.2.3/compliance", {}, None),
    ("GET", "/api/quality", {}, None),
    ("GET", "/quality", {}, None),
]


async def who(request: Request) -> JSONResponse:
    return JSONResponse(dataclasses.asdict(request.state.caller))


def make_app(config: Config, archive: Archive) -> Starlette:
    """The app ``huren serve`` runs, plus ``/test/caller``, with authentication and CORS in place."""
    app = build_app(config, archive.db, archive.store, archive.ingest, archive.folder / "spool",
                    Compliance(archive.db, config), audit_trail(archive.db))
    app.router.routes.append(Route("/test/caller", who))
    return app


@pytest.fixture
def archive(index_url: str, tmp_path: Path) -> Archive:
    return Archive(index_url, tmp_path)


@pytest.fixture
def client(archive: Archive) -> Iterator[TestClient]:
    with TestClient(make_app(Config.model_validate({"hospitals": HOSPITALS}), archive)) as test_client:
        yield test_client


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def assert_refused(response: Any, presented: bool) -> None:
    assert response.status_code == 401, response.text
    assert response.json()["status"] == 401 and response.json()["error"]
    challenge = response.headers["WWW-Authenticate"]
    if presented:
        assert challenge.startswith('Bearer realm="huren", error="invalid_token", error_description="')
    else:
        assert challenge == 'Bearer realm="huren"'


# Huren tokens.

@pytest.mark.parametrize(("method", "path", "headers", "content"), REQUESTS)
def test_every_request_needs_a_token(client: TestClient, archive: Archive, method: str, path: str,
                                     headers: dict[str, str], content: bytes | None) -> None:
    def send(authorization: dict[str, str]) -> Any:
        return client.request(method, path, headers={**headers, **authorization}, content=content)

    assert_refused(send({}), presented=False)
    assert_refused(send({"Authorization": "Basic Ymo6YQ=="}), presented=False)
    _, good = tokens.create(archive.db, hospital_id="bj-a", admin=False, expires_days=1)
    answered = send(bearer(good))
    assert answered.status_code not in (401, 500), answered.text


def test_bad_tokens_are_refused(client: TestClient, archive: Archive, caplog: pytest.LogCaptureFixture) -> None:
    info, good = tokens.create(archive.db, hospital_id="bj-a", admin=False, expires_days=None)
    expired_info, expired = tokens.create(archive.db, hospital_id="bj-a", admin=False, expires_days=1)
    revoked_info, revoked = tokens.create(archive.db, hospital_id="bj-a", admin=False, expires_days=None)
    with archive.db.writing() as conn:
        conn.execute(update(token_table).where(token_table.c.token_id == expired_info.token_id)
                     .values(expires_at=datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=1)))
    tokens.revoke(archive.db, revoked_info.token_id)
    wrong = good[:-1] + ("1" if good.endswith("0") else "0")
    caplog.set_level(logging.INFO, logger="huren.auth")
    for token in (wrong, expired, revoked, "huren_nonsense", "eyJhbGciOiJub25lIn0.e30.", ""):
        for path in ("/dicom-web/studies", "/test/caller"):
            response = client.get(path, headers=bearer(token))
            assert_refused(response, presented=True)
            assert token not in response.text or not token
    assert client.get("/test/caller", headers=bearer(good)).status_code == 200
    assert all(secret.split("_")[2] not in record.getMessage() + str(vars(record))
               for record in caplog.records for secret in (good, expired, revoked))


def test_refused_requests_are_audited_as_failed_logins(client: TestClient, archive: Archive) -> None:
    info, good = tokens.create(archive.db, hospital_id="bj-a", admin=False, expires_days=None)
    forged = good[:-1] + ("1" if good.endswith("0") else "0")
    unsigned = jwt.encode({"sub": "u-77", "iss": ISSUER}, "not the provider's key", algorithm="HS256")
    for headers in ({}, bearer(forged), bearer(unsigned), bearer("nonsense")):
        assert client.get("/dicom-web/studies", headers=headers).status_code == 401
    client.app.state.audit.flush()
    with archive.db.reading() as conn:
        rows = conn.execute(select(audit_events.c.door, audit_events.c.action, audit_events.c.outcome,
                                   audit_events.c.actor, audit_events.c.detail)
                            .order_by(audit_events.c.pk)).all()
    assert [row[:3] for row in rows] == [("http", "login", "denied")] * 4
    # Who the credential claimed to be, never the credential.
    assert [row.actor for row in rows] == ["anonymous", info.token_id, "oidc:u-77 (unverified)",
                                           "unknown bearer token"]
    assert rows[0].detail == "no bearer token: GET /dicom-web/studies"
    assert all(good.split("_")[2][:-1] not in row.detail for row in rows)


def test_a_hospital_token_carries_its_hospital(client: TestClient, archive: Archive) -> None:
    info, presented = tokens.create(archive.db, hospital_id="tj-b", admin=False, expires_days=30)
    assert client.get("/test/caller", headers=bearer(presented)).json() == {
        "door": "http", "actor": info.token_id, "hospital_id": "tj-b", "admin": False, "address": "testclient",
    }
    # The scheme's name is case-insensitive (RFC 9110 §11.1).
    assert client.get("/test/caller", headers={"Authorization": f"bearer {presented}"}).status_code == 200


def test_an_admin_token(client: TestClient, archive: Archive) -> None:
    info, presented = tokens.create(archive.db, hospital_id=None, admin=True, expires_days=None)
    assert client.get("/test/caller", headers=bearer(presented)).json() == {
        "door": "http", "actor": info.token_id, "hospital_id": None, "admin": True, "address": "testclient",
    }
    assert client.get("/dicom-web/studies", headers=bearer(presented)).status_code == 200


def test_a_token_of_a_hospital_no_longer_configured_is_refused(archive: Archive) -> None:
    _, presented = tokens.create(archive.db, hospital_id="tj-b", admin=False, expires_days=None)
    config = Config.model_validate({"hospitals": HOSPITALS[:1]})
    with TestClient(make_app(config, archive)) as client:
        assert_refused(client.get("/test/caller", headers=bearer(presented)), presented=True)


def test_probes_and_preflights_need_no_token(client: TestClient) -> None:
    assert client.get("/health").status_code == 200
    assert client.get("/livez").status_code != 401
    assert client.get("/readyz").status_code != 401
    preflight = {"Origin": "https://viewer.example", "Access-Control-Request-Method": "GET"}
    assert client.options("/dicom-web/studies", headers=preflight).status_code != 401
    assert_refused(client.options("/dicom-web/studies"), presented=False)


def test_open_access_when_not_enforced(archive: Archive) -> None:
    with TestClient(make_app(Config(), archive)) as client:
        assert client.get("/test/caller").json() == {
            "door": "http", "actor": "open", "hospital_id": None, "admin": False, "address": "testclient",
        }
        assert client.get("/dicom-web/studies").status_code == 200


def test_a_verified_token_is_remembered_for_a_bounded_time(archive: Archive, monkeypatch: pytest.MonkeyPatch) -> None:
    """One index query per token per cache period; a revoked token stops working once it runs out."""
    config = Config.model_validate({"hospitals": HOSPITALS})
    app = Starlette(routes=[Route("/test/caller", who)],
                    middleware=[Middleware(Authentication, config=config, db=archive.db, oidc=None,
                                           audit=audit_trail(archive.db), cache_seconds=0.5)])
    info, presented = tokens.create(archive.db, hospital_id="bj-a", admin=False, expires_days=None)
    lookups = []
    verify = tokens.verify
    monkeypatch.setattr(tokens, "verify", lambda *args: lookups.append(1) or verify(*args))
    with TestClient(app) as client:
        for _ in range(5):
            assert client.get("/test/caller", headers=bearer(presented)).status_code == 200
        assert len(lookups) == 1
        tokens.revoke(archive.db, info.token_id)
        assert client.get("/test/caller", headers=bearer(presented)).status_code == 200
        time.sleep(0.6)
        assert_refused(client.get("/test/caller", headers=bearer(presented)), presented=True)


# OIDC access tokens.

def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def claims(**changes: Any) -> dict[str, Any]:
    now = int(time.time())
    values = {"iss": ISSUER, "aud": AUDIENCE, "sub": "u-123", "iat": now, "exp": now + 300, "hospital": "bj-a"}
    values.update(changes)
    return {k: v for k, v in values.items() if v is not None}


def hs256(payload: dict[str, Any], secret: bytes) -> str:
    """An HS256 token keyed with `secret` (PyJWT refuses to make one with a public key: the attack)."""
    def part(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    signing_input = part(b'{"alg":"HS256","typ":"JWT"}') + "." + part(json.dumps(payload).encode())
    return signing_input + "." + part(hmac.digest(secret, signing_input.encode(), hashlib.sha256))


@pytest.fixture(scope="module")
def idp_key() -> rsa.RSAPrivateKey:
    return rsa_key()


def oidc_config(**oidc: Any) -> Config:
    return Config.model_validate({
        "hospitals": HOSPITALS, "access": {"oidc": {"issuer": ISSUER, "audience": AUDIENCE, **oidc}},
    })


def sign(payload: dict[str, Any], key: rsa.RSAPrivateKey, kid: str = "k1") -> str:
    return jwt.encode(payload, key, algorithm="RS256", headers={"kid": kid})


def test_oidc_with_a_key_file(archive: Archive, tmp_path: Path, idp_key: rsa.RSAPrivateKey) -> None:
    pem = idp_key.public_key().public_bytes(serialization.Encoding.PEM,
                                            serialization.PublicFormat.SubjectPublicKeyInfo)
    (tmp_path / "idp.pem").write_bytes(pem)
    with TestClient(make_app(oidc_config(key_file=str(tmp_path / "idp.pem")), archive)) as client:
        def caller(token: str) -> dict[str, Any]:
            response = client.get("/test/caller", headers=bearer(token))
            assert response.status_code == 200, response.text
            return response.json()

        assert caller(sign(claims(), idp_key)) == {
            "door": "http", "actor": "oidc:u-123", "hospital_id": "bj-a", "admin": False, "address": "testclient",
        }
        assert caller(sign(claims(hospital=None, huren_admin=True), idp_key))["admin"] is True
        admin = caller(sign(claims(huren_admin=["viewer", "admin"]), idp_key))
        assert (admin["admin"], admin["hospital_id"]) == (True, "bj-a")
        assert caller(sign(claims(huren_admin=False), idp_key))["admin"] is False
        now = int(time.time())
        refused = {
            "wrong audience": sign(claims(aud="another-app"), idp_key),
            "wrong issuer": sign(claims(iss="https://evil.example"), idp_key),
            "expired": sign(claims(exp=now - 3600), idp_key),
            "not yet valid": sign(claims(nbf=now + 3600), idp_key),
            "no expiry": sign(claims(exp=None), idp_key),
            "no subject": sign(claims(sub=None), idp_key),
            "unknown hospital": sign(claims(hospital="sh-x"), idp_key),
            "hospital not a string": sign(claims(hospital=["bj-a"]), idp_key),
            "no hospital, not admin": sign(claims(hospital=None, huren_admin="yes"), idp_key),
            "another key": sign(claims(), rsa_key()),
            "alg none": jwt.encode(claims(), None, algorithm="none"),
            "HS256 keyed with the public key": hs256(claims(), pem),
            "tampered": sign(claims(), idp_key)[:-4] + "AAAA",
        }
        for why, token in refused.items():
            response = client.get("/dicom-web/studies", headers=bearer(token))
            assert response.status_code == 401, why
            assert 'error="invalid_token"' in response.headers["WWW-Authenticate"], why


class Jwks:
    """A JSON Web Key Set (RFC 7517 §5) served on 127.0.0.1, counting its fetches."""

    def __init__(self, key: rsa.RSAPrivateKey, kid: str) -> None:
        jwk = jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
        body = json.dumps({"keys": [{**jwk, "kid": kid, "use": "sig", "alg": "RS256"}]}).encode()
        self.fetches = 0
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.fetches += 1
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/realms/huren/protocol/openid-connect/certs"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_oidc_with_a_jwks_url(archive: Archive, idp_key: rsa.RSAPrivateKey) -> None:
    jwks = Jwks(idp_key, "k1")
    try:
        with TestClient(make_app(oidc_config(jwks_url=jwks.url), archive)) as client:
            for _ in range(3):
                response = client.get("/test/caller", headers=bearer(sign(claims(), idp_key)))
                assert response.json()["actor"] == "oidc:u-123" and response.json()["hospital_id"] == "bj-a"
            assert jwks.fetches == 1  # the key set is kept
            assert client.get("/dicom-web/studies", headers=bearer(sign(claims(), idp_key))).status_code == 200
            for token in (sign(claims(), idp_key, kid="unknown"), sign(claims(), rsa_key()),
                          sign(claims(aud="another-app"), idp_key), sign(claims(exp=int(time.time()) - 3600), idp_key),
                          sign(claims(hospital="sh-x"), idp_key)):
                assert_refused(client.get("/dicom-web/studies", headers=bearer(token)), presented=True)
    finally:
        jwks.close()


def test_oidc_provider_unreachable_is_503_not_401(archive: Archive, idp_key: rsa.RSAPrivateKey) -> None:
    config = oidc_config(jwks_url=f"http://127.0.0.1:{free_port()}/certs")
    with TestClient(make_app(config, archive)) as client:
        response = client.get("/dicom-web/studies", headers=bearer(sign(claims(), idp_key)))
    assert response.status_code == 503 and "identity provider" in response.json()["error"]


def test_huren_tokens_work_beside_oidc(archive: Archive, tmp_path: Path, idp_key: rsa.RSAPrivateKey) -> None:
    (tmp_path / "idp.pem").write_bytes(idp_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    info, presented = tokens.create(archive.db, hospital_id="tj-b", admin=False, expires_days=None)
    with TestClient(make_app(oidc_config(key_file=str(tmp_path / "idp.pem")), archive)) as client:
        assert client.get("/test/caller", headers=bearer(presented)).json()["actor"] == info.token_id
        assert client.get("/test/caller", headers=bearer(sign(claims(), idp_key))).json()["actor"] == "oidc:u-123"


def test_an_unreadable_key_file_is_named(archive: Archive, tmp_path: Path) -> None:
    from archive.config import ConfigError

    (tmp_path / "not-a-key.pem").write_text("hello")
    for path, message in ((tmp_path / "missing.pem", "cannot read"), (tmp_path / "not-a-key.pem", "not a PEM")):
        with pytest.raises(ConfigError, match=f"access.oidc.key_file: .*{message}"):
            auth.install(Starlette(), oidc_config(key_file=str(path)), archive.db, audit_trail(archive.db))
