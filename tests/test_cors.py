"""Cross-origin requests (dicomweb/cors.py): a browser viewer on another origin, on the real app."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from archive import tokens
from archive.config import Config
from tests.conftest import Archive
from tests.test_auth import HOSPITALS, assert_refused, bearer, make_app

VIEWER = "https://viewer.example"
PREFLIGHT = {"Origin": VIEWER, "Access-Control-Request-Method": "GET",
             "Access-Control-Request-Headers": "authorization"}


@pytest.fixture
def client(index_url: str, tmp_path: Path) -> Iterator[TestClient]:
    config = Config.model_validate({"hospitals": HOSPITALS,
                                    "access": {"cors": {"origins": [VIEWER], "max_age": 1200}}})
    with TestClient(make_app(config, Archive(index_url, tmp_path))) as test_client:
        yield test_client


def hospital_token(client: TestClient) -> str:
    return tokens.create(client.app.state.db, hospital_id="bj-a", admin=False, expires_days=None)[1]


def listed(value: str) -> set[str]:
    return {part.strip().lower() for part in value.split(",")}


@pytest.mark.parametrize("path", ["/dicom-web/studies", "/dicom-web/studies/1.2.3/metadata", "/api/recognition"])
def test_a_preflight_is_answered_without_a_token(client: TestClient, path: str) -> None:
    response = client.options(path, headers=PREFLIGHT)
    assert response.status_code == 200, response.text
    headers = response.headers
    assert headers["Access-Control-Allow-Origin"] == VIEWER
    assert headers["Access-Control-Allow-Credentials"] == "true"
    assert {"get", "post", "delete", "options"} <= listed(headers["Access-Control-Allow-Methods"])
    assert {"authorization", "accept", "content-type"} <= listed(headers["Access-Control-Allow-Headers"])
    assert headers["Access-Control-Max-Age"] == "1200"
    stow = client.options("/dicom-web/studies", headers={
        **PREFLIGHT, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type"})
    assert stow.status_code == 200 and stow.headers["Access-Control-Allow-Origin"] == VIEWER


def test_a_cross_origin_request_with_a_token(client: TestClient) -> None:
    response = client.get("/dicom-web/studies", headers={"Origin": VIEWER, **bearer(hospital_token(client))})
    assert response.status_code == 200
    assert response.headers["Access-Control-Allow-Origin"] == VIEWER
    assert response.headers["Access-Control-Allow-Credentials"] == "true"
    assert {"content-type", "content-length", "content-location", "warning", "etag", "location"} <= listed(
        response.headers["Access-Control-Expose-Headers"])
    assert "origin" in listed(response.headers["Vary"])
    # A refusal names the origin too, or the viewer could not read why and log in again.
    refused = client.get("/dicom-web/studies", headers={"Origin": VIEWER})
    assert_refused(refused, presented=False)
    assert refused.headers["Access-Control-Allow-Origin"] == VIEWER


def test_a_foreign_origin_gets_no_allow_header(client: TestClient) -> None:
    foreign = "https://evil.example"
    preflight = client.options("/dicom-web/studies", headers={**PREFLIGHT, "Origin": foreign})
    assert preflight.status_code == 400 and "Access-Control-Allow-Origin" not in preflight.headers
    response = client.get("/dicom-web/studies", headers={"Origin": foreign, **bearer(hospital_token(client))})
    assert response.status_code == 200 and "Access-Control-Allow-Origin" not in response.headers
    unasked = client.options("/dicom-web/studies", headers={**PREFLIGHT, "Access-Control-Request-Headers": "x-evil"})
    assert unasked.status_code == 400


def test_no_origins_no_cors(index_url: str, tmp_path: Path) -> None:
    app = make_app(Config.model_validate({"hospitals": HOSPITALS}), Archive(index_url, tmp_path))
    with TestClient(app) as client:
        response = client.get("/dicom-web/studies", headers={"Origin": VIEWER, **bearer(hospital_token(client))})
        assert response.status_code == 200
        assert not any(name.lower().startswith("access-control-") for name in response.headers)
        assert client.options("/dicom-web/studies", headers=PREFLIGHT).status_code != 200
