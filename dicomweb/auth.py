"""Who is calling over HTTP: bearer tokens (RFC 6750), as a :class:`~archive.policy.Caller`.

Every request but the health probes and CORS preflights gets
``request.state.caller``. While access is not enforced (no hospitals, no
OIDC: :attr:`archive.config.Config.access_enforced`) everyone is the open
caller. Otherwise the request must carry ``Authorization: Bearer <token>``,
either

- a Huren token (``huren token create``, :mod:`archive.tokens`): the caller is
  the token's hospital, the actor its token id; or
- an OpenID Connect access token, a JWT (RFC 7519) signed by the provider's
  key (``access.oidc``): the caller is the hospital its hospital claim names,
  the actor ``oidc:<sub>``;

or come over HTTPS with a client certificate, verified against
``http.tls.client_ca``, that ``hospitals[].certificates`` names: the caller is
that hospital, the actor ``certificate:<common name>``. With both, a token of
another hospital than the certificate's (an admin's excepted) is refused.

A hospital a credential names must be configured, and a caller who is not an
admin must have one: a caller without a hospital sees everything. Anything
else is a 401 that says only that the token is not accepted, never which
check failed; the token itself is never logged.

This is pure ASGI rather than Starlette's ``BaseHTTPMiddleware``, which would
buffer the streamed WADO-RS and STOW-RS bodies.
"""

from __future__ import annotations

import datetime
import hashlib
import logging
import time
from dataclasses import replace
from pathlib import Path

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from archive import tokens
from archive.audit import AuditEvent, AuditTrail
from archive.config import Config, ConfigError, Oidc
from archive.index.database import Database
from archive.policy import Caller
from archive.tls import common_names, hospital_for_certificate
from dicomweb.tls import client_certificate

log = logging.getLogger("huren.auth")

REALM = "huren"
# Probes come from load balancers and orchestrators, which carry no credentials.
PROBES = frozenset({"/health", "/livez", "/readyz"})
# A verified Huren token is remembered this long, so a client's requests do not
# each cost an index query. The price: a revoked token keeps working on a
# running server for up to this many seconds after `huren token revoke`.
CACHE_SECONDS = 10.0
CACHE_ENTRIES = 4096
# Clock skew tolerated on exp and nbf between us and the identity provider (RFC 7519 §4.1.4).
LEEWAY_SECONDS = 30


def install(app: Starlette, config: Config, db: Database, audit: AuditTrail) -> None:
    """Make every request of `app` say who calls (see the module docstring).

    Requests refused for their credentials are recorded in `audit` as
    denied logins.

    Call before :func:`dicomweb.cors.install`: Starlette's ``add_middleware``
    wraps the application, so the middleware added last is the outermost, and
    CORS must be outside authentication for preflights, which carry no
    credentials, to be answered. Call before `app` serves its first request.

    Raises :class:`~archive.config.ConfigError` if ``access.oidc.key_file``
    cannot be read as a PEM public key or certificate: here, so that it stops
    the start (Starlette makes middleware only when the first request comes).
    """
    oidc = OidcVerifier(config.access.oidc) if config.access.oidc is not None else None
    app.add_middleware(Authentication, config=config, db=db, oidc=oidc, audit=audit)


class Authentication:
    """ASGI middleware setting ``scope["state"]["caller"]`` or answering 401.

    `oidc` checks the access tokens of ``config.access.oidc`` (``None``: only
    Huren tokens are accepted).
    """

    def __init__(self, app: ASGIApp, config: Config, db: Database, oidc: OidcVerifier | None,
                 audit: AuditTrail, cache_seconds: float = CACHE_SECONDS) -> None:
        self.app = app
        self.config = config
        self.db = db
        self.oidc = oidc
        self.audit = audit
        self.cache_seconds = cache_seconds
        # Token SHA-256 -> (monotonic time it is good until, caller). Read and
        # written on the event loop only, so it needs no lock.
        self._recent: dict[str, tuple[float, Caller]] = {}
        # Client certificate (DER) -> the caller it proves, if any; likewise on the event loop only.
        self._certificates: dict[bytes, Caller | None] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or _unguarded(scope):
            await self.app(scope, receive, send)
            return
        address = scope["client"][0] if scope.get("client") else None
        if not self.config.access_enforced:
            caller = Caller("http", "open", address=address)
        else:
            answer = await self._authenticate(scope, address)
            if isinstance(answer, Response):
                await answer(scope, receive, send)
                return
            caller = replace(answer, address=address)
        scope.setdefault("state", {})["caller"] = caller
        await self.app(scope, receive, send)

    async def _authenticate(self, scope: Scope, address: str | None) -> Caller | Response:
        """The caller of an access-controlled request, or the answer that refuses it."""
        presented = _bearer(Headers(scope=scope))
        certified = self._certified(scope)
        if presented is None:
            if certified is not None:
                return certified
            log.info("authentication required", extra={"address": address, "path": scope["path"]})
            self._denied("anonymous", address, scope, "no bearer token")
            return _unauthorized(None)
        try:
            caller = await self.identify(presented)
        except jwt.PyJWKClientConnectionError as exc:
            # The provider is down, not the token wrong: a 401 would send viewers to log in again.
            log.warning("identity provider keys unavailable: %s", exc, extra={"address": address})
            return JSONResponse({"error": "the identity provider's signing keys cannot be fetched; "
                                          "try again later", "status": 503}, status_code=503)
        if caller is None:
            log.info("bearer token refused", extra={"address": address, "path": scope["path"]})
            self._denied(_claimed_actor(presented), address, scope, "bearer token not accepted")
            return _unauthorized("The access token is not accepted")
        if certified is not None and not caller.admin and caller.hospital_id != certified.hospital_id:
            # Two proofs of identity that disagree: believe neither.
            log.info("bearer token of another hospital than the client certificate", extra={
                "address": address, "hospital": certified.hospital_id, "path": scope["path"]})
            self._denied(caller.actor, address, scope,
                         f"a token of {caller.hospital_id} with a client certificate of {certified.hospital_id}")
            return _unauthorized("The access token is not for the hospital of the client certificate")
        return caller

    def _certified(self, scope: Scope) -> Caller | None:
        """The hospital a verified client certificate of this connection speaks for (:mod:`dicomweb.tls`)."""
        der = client_certificate(scope)
        if der is None:
            return None
        if der not in self._certificates:
            if len(self._certificates) >= CACHE_ENTRIES:
                self._certificates.clear()
            hospital = hospital_for_certificate(self.config, der)
            self._certificates[der] = None if hospital is None else Caller(
                "http", f"certificate:{(common_names(der) or [hashlib.sha256(der).hexdigest()])[0]}",
                hospital_id=hospital.id)
        return self._certificates[der]

    def _denied(self, actor: str, address: str | None, scope: Scope, reason: str) -> None:
        """Record a request refused for its credentials (a failed login, PS3.15 A.5.3.12)."""
        self.audit.record(AuditEvent("login", "denied", Caller("http", actor, address=address),
                                     detail=f"{reason}: {scope['method']} {scope['path']}"))

    async def identify(self, presented: str) -> Caller | None:
        """The caller `presented` speaks for, without an address; ``None`` if it is not accepted.

        Raises :class:`jwt.PyJWKClientConnectionError` if the identity
        provider's keys are needed and cannot be fetched.
        """
        if presented.startswith(tokens.PREFIX):
            return await self._huren(presented)
        if self.oidc is not None and presented.count(".") == 2:  # a JWS compact serialisation
            try:
                claims = await run_in_threadpool(self.oidc.claims, presented)
            except jwt.PyJWKClientConnectionError:
                raise
            except jwt.PyJWTError:
                return None
            return self._oidc_caller(claims)
        return None

    async def _huren(self, presented: str) -> Caller | None:
        # Looked up by the token's hash, so the (not constant-time) dict lookup
        # can only teach a guesser bits of a SHA-256, never of a token.
        key = tokens.digest(presented)
        now = time.monotonic()
        cached = self._recent.get(key)
        if cached is not None and cached[0] > now:
            return cached[1]
        wall = datetime.datetime.now(datetime.UTC)
        info = await run_in_threadpool(tokens.verify, self.db, presented, wall)
        if info is None:
            return None
        caller = self._caller(info.token_id, info.hospital_id, info.admin)
        if caller is not None:
            lifetime = self.cache_seconds
            if info.expires_at is not None:
                lifetime = min(lifetime, (info.expires_at - wall).total_seconds())
            if len(self._recent) >= CACHE_ENTRIES:
                self._recent = {k: v for k, v in self._recent.items() if v[0] > now}
                if len(self._recent) >= CACHE_ENTRIES:
                    self._recent.clear()
            self._recent[key] = (now + lifetime, caller)
        return caller

    def _oidc_caller(self, claims: dict) -> Caller | None:
        assert self.oidc is not None
        hospital = claims.get(self.oidc.settings.hospital_claim)
        if hospital is not None and not isinstance(hospital, str):
            return None
        granted = claims.get(self.oidc.settings.admin_claim)
        admin = granted is True or (isinstance(granted, list) and "admin" in granted)
        return self._caller(f"oidc:{claims['sub']}", hospital, admin)

    def _caller(self, actor: str, hospital_id: str | None, admin: bool) -> Caller | None:
        """The caller a verified credential names, if this configuration admits it."""
        if hospital_id is None and not admin:
            return None
        if hospital_id is not None and self.config.hospital(hospital_id) is None:
            return None  # a hospital since removed from the configuration, or never in it
        return Caller("http", actor, hospital_id=hospital_id, admin=admin)


class OidcVerifier:
    """Checks OIDC access tokens: signature, issuer, audience, expiry (RFC 7519 §7.2, RFC 9068 §4)."""

    def __init__(self, settings: Oidc) -> None:
        self.settings = settings
        # PyJWKClient keeps the provider's key set for 5 minutes and fetches it
        # again early for an unknown key id, at most every 30 s (key rotation).
        self.jwks = jwt.PyJWKClient(settings.jwks_url, timeout=10) if settings.jwks_url else None
        self.key = _public_key(settings.key_file) if settings.key_file else None

    def claims(self, token: str) -> dict:
        """The token's claims once every check passes.

        Blocks on the provider's JWKS URL when its keys are not cached.

        Raises
        ------
        jwt.PyJWKClientConnectionError
            If the signing keys cannot be fetched.
        jwt.PyJWTError
            If the token is malformed, wrongly signed, expired, not yet
            valid, or for another issuer or audience.
        """
        key = self.jwks.get_signing_key_from_jwt(token).key if self.jwks is not None else self.key
        return jwt.decode(
            token, key, algorithms=self.settings.algorithms, audience=self.settings.audience,
            issuer=self.settings.issuer, leeway=LEEWAY_SECONDS,
            options={"require": ["exp", "iss", "aud", "sub"]},
        )


def _public_key(path: Path) -> PublicKeyTypes:
    """The key in a PEM file: a public key, or an X.509 certificate's (as providers publish them)."""
    try:
        data = path.read_bytes()
        if b"-----BEGIN CERTIFICATE-----" in data:
            return x509.load_pem_x509_certificate(data).public_key()
        return serialization.load_pem_public_key(data)
    except OSError as exc:
        raise ConfigError(f"access.oidc.key_file: cannot read {path}: {exc.strerror}") from None
    except ValueError:
        raise ConfigError(f"access.oidc.key_file: {path} is not a PEM public key or certificate") from None


def _unguarded(scope: Scope) -> bool:
    method = scope["method"]
    if method in ("GET", "HEAD"):
        return scope["path"] in PROBES
    if method != "OPTIONS":
        return False
    # A CORS preflight (Fetch standard §3.2.2) never carries credentials.
    headers = Headers(scope=scope)
    return "origin" in headers and "access-control-request-method" in headers


def _claimed_actor(presented: str) -> str:
    """Who a refused token claims to be, for the audit trail: a Huren token's public id, an OIDC
    token's unverified subject; never the token itself."""
    token_id = tokens.token_id(presented)
    if token_id is not None:
        return token_id
    if presented.count(".") == 2:
        try:
            subject = jwt.decode(presented, options={"verify_signature": False}).get("sub")
        except jwt.PyJWTError:
            subject = None
        if isinstance(subject, str) and subject:
            return f"oidc:{subject[:64]} (unverified)"
    return "unknown bearer token"


def _bearer(headers: Headers) -> str | None:
    """The token of an ``Authorization: Bearer`` header (RFC 6750 §2.1); ``None`` without one."""
    scheme, _, token = headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer":  # auth-scheme is case-insensitive (RFC 9110 §11.1)
        return None
    return token.strip()


def _unauthorized(description: str | None) -> JSONResponse:
    """A 401 with its challenge (RFC 6750 §3): an error code only when a token was presented."""
    challenge = f'Bearer realm="{REALM}"'
    if description is None:
        message = ("authentication required: send 'Authorization: Bearer <token>' with a Huren token "
                   "(huren token create) or an access token from the identity provider")
    else:
        challenge += f', error="invalid_token", error_description="{description}"'
        message = "the bearer token is not accepted (unknown, expired, revoked or not for this server)"
    return JSONResponse({"error": message, "status": 401}, status_code=401,
                        headers={"WWW-Authenticate": challenge})
