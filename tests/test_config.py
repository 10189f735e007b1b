"""The configuration model and `huren check-config` / `huren serve` refusing bad files."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from archive.config import ConfigError, S3Storage, load_config
from tests.conftest import PG_ADMIN_URL, _postgres_answers, free_port

ROOT = Path(__file__).resolve().parent.parent


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "huren.yaml"
    path.write_text(text)
    return path


def test_shipped_config_is_the_embedded_default() -> None:
    config = load_config(ROOT / "conf" / "huren.yaml")
    assert config.dicom.ae_title == "HUREN" and config.dicom.port == 11112
    assert config.http.port == 8080 and config.http.dicomweb_root == "/dicom-web"
    assert config.storage.backend == "filesystem"
    assert config.index.url.startswith("sqlite:///")


def test_empty_file_gives_defaults(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, ""))
    assert config.dicom.max_pdu >= 256 * 1024
    assert config.ingest.on_conflict == "reject"


def test_the_receive_folder_by_its_name_and_its_former_one(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, "")).ingest.receive_folder == Path("./var/receive")
    for key in ("receive_folder", "spool"):
        assert load_config(write(tmp_path, f"ingest: {{{key}: /srv/in}}\n")).ingest.receive_folder == Path("/srv/in")
    with pytest.raises(ConfigError, match="ingest.queue"):
        load_config(write(tmp_path, "ingest: {queue: /srv/in}\n"))


def test_s3_section(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "storage: {backend: s3, bucket: scans, prefix: /pilot/}\n"))
    assert isinstance(config.storage, S3Storage)
    assert config.storage.prefix == "pilot"


@pytest.mark.parametrize("text, key", [
    ("dicom: {ae_titel: X}\n", "dicom.ae_titel: unknown key"),
    ("dicom: {port: eleven}\n", "dicom.port"),
    ("dicom: {port: 70000}\n", "dicom.port"),
    ("dicom: {ae_title: THIS_AE_TITLE_IS_TOO_LONG}\n", "dicom.ae_title"),
    ("storage: {backend: tape}\n", "storage"),
    ("storage: {backend: s3}\n", "storage.bucket"),
    ("index: {url: 'mysql://x'}\n", "index.url"),
    ("ingest: {on_conflict: overwrite}\n", "ingest.on_conflict"),
    ("workers: 0\n", "workers"),
    ("http: {dicomweb_root: dicom-web}\n", "http.dicomweb_root"),
    ("hospitals: [{id: a, name: A, ae_titles: [CT]}, {id: b, name: B, ae_titles: [CT]}]\n", "AE title 'CT'"),
    ("- just a list\n", "top level"),
    ("dicom: {port: [\n", "not valid YAML"),
])
def test_bad_values_name_the_key(tmp_path: Path, text: str, key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, text))
    assert key in str(caught.value)
    assert str(tmp_path) in str(caught.value)


@pytest.mark.parametrize("command", ["check-config", "serve"])
def test_cli_refuses_a_bad_file_without_a_traceback(tmp_path: Path, command: str) -> None:
    path = write(tmp_path, "dicom: {port: eleven}\n")
    args = [command, str(path)] if command == "check-config" else [command, "--config", str(path)]
    result = subprocess.run([sys.executable, "-m", "huren", *args], capture_output=True, text=True,
                            timeout=60, cwd=tmp_path)
    assert result.returncode == 2
    assert "dicom.port" in result.stderr
    assert "Traceback" not in result.stderr


def test_check_config_accepts_the_shipped_file() -> None:
    result = subprocess.run([sys.executable, "-m", "huren", "check-config", "conf/huren.yaml"],
                            capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert "OK" in result.stdout


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "nope.yaml")


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("door", ["dicom", "http"])
def test_serve_names_a_port_it_cannot_listen_on(tmp_path: Path, workers: int, door: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        ports = {"dicom": free_port(), "http": free_port(), door: taken.getsockname()[1]}
        path = write(tmp_path, f"dicom: {{host: 127.0.0.1, port: {ports['dicom']}}}\n"
                               f"http: {{port: {ports['http']}}}\n"
                               f"index: {{url: 'sqlite:///{tmp_path}/index.db'}}\n"
                               f"storage: {{backend: filesystem, path: {tmp_path}/archive}}\n"
                               f"ingest: {{spool: {tmp_path}/spool}}\nworkers: {workers}\n")
        result = subprocess.run([sys.executable, "-m", "huren", "serve", "--config", str(path)],
                                capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert result.returncode == 1
    assert f"127.0.0.1:{ports[door]}" in result.stderr
    assert "Traceback" not in result.stderr


def test_serve_refuses_an_open_archive_off_loopback(tmp_path: Path) -> None:
    """No hospitals and no OIDC: open access, which huren serve allows on loopback only."""
    path = write(tmp_path, f"http: {{host: 0.0.0.0, port: {free_port()}}}\n"
                           f"dicom: {{host: 127.0.0.1, port: {free_port()}}}\n")
    result = subprocess.run([sys.executable, "-m", "huren", "serve", "--config", str(path)],
                            capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert result.returncode == 2
    for key in ("hospitals", "access.oidc", "http.host"):
        assert key in result.stderr
    assert "Traceback" not in result.stderr


def test_hospital_addresses_must_be_networks(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, "hospitals: [{id: a, name: A, addresses: [10.0.0.0/8, somewhere]}]\n"))
    assert "hospitals.0.addresses" in str(caught.value) and "somewhere" in str(caught.value)


def serve_and_check(tmp_path: Path, text: str) -> list[subprocess.CompletedProcess]:
    """`huren serve` and `huren check-config --connect` on a configuration."""
    path = write(tmp_path, f"http: {{port: {free_port()}}}\ndicom: {{host: 127.0.0.1, port: {free_port()}}}\n"
                           f"ingest: {{spool: {tmp_path / 'spool'}}}\n" + text)
    return [subprocess.run([sys.executable, "-m", "huren", *command], capture_output=True, text=True,
                           timeout=120, cwd=tmp_path)
            for command in (["serve", "--config", str(path)], ["check-config", "--connect", str(path)])]


def test_a_missing_database_is_named_with_the_fix(tmp_path: Path) -> None:
    if not _postgres_answers():
        pytest.skip("PostgreSQL does not answer at 127.0.0.1:5432")
    missing = make_url(PG_ADMIN_URL).set(database="huren_no_such_database")
    for result in serve_and_check(tmp_path, f"index: {{url: '{missing.render_as_string(hide_password=False)}'}}\n"):
        assert result.returncode == 2, result.stderr
        assert "index.url" in result.stderr and "createdb" in result.stderr
        assert "huren_no_such_database" in result.stderr
        assert "Traceback" not in result.stderr


def test_a_missing_bucket_is_named(tmp_path: Path, s3_endpoint: str) -> None:
    text = (f"storage: {{backend: s3, bucket: no-such-bucket, endpoint_url: '{s3_endpoint}', region: us-east-1}}\n"
            f"index: {{url: 'sqlite:///{tmp_path / 'index.db'}'}}\n")
    for result in serve_and_check(tmp_path, text):
        assert result.returncode == 2, result.stderr
        assert "storage (bucket 'no-such-bucket'" in result.stderr and "storage.bucket" in result.stderr
        assert "Traceback" not in result.stderr


def test_check_config_connect_passes_when_both_answer(tmp_path: Path) -> None:
    path = write(tmp_path, f"index: {{url: 'sqlite:///{tmp_path / 'index.db'}'}}\n"
                           f"storage: {{backend: filesystem, path: {tmp_path / 'archive'}}}\n")
    result = subprocess.run([sys.executable, "-m", "huren", "check-config", "--connect", str(path)],
                            capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
