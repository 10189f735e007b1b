"""Kill the server in the middle of a large C-STORE: after a restart the index and the
blob store agree, and the instance is either wholly present or absent."""

from __future__ import annotations

import hashlib
import signal
import subprocess
import time
from pathlib import Path

import pytest
from dicomweb_client.api import DICOMwebClient
from sqlalchemy import create_engine, text

from archive.config import Config
from archive.storage import open_store
from tests.conftest import Huren, dcmtk, dcmtk_env
from tests.factory import instance, write


def _spooled_bytes(spool: Path) -> int:
    # Each process receives in a folder of its own below the spool (archive.receiving).
    return sum(p.stat().st_size for p in spool.rglob("*") if p.is_file()) if spool.exists() else 0


@pytest.mark.slow
def test_kill_during_large_store(any_huren: Huren, tmp_path: Path) -> None:
    small = write(instance(), tmp_path / "small.dcm")
    assert any_huren.storescu(small).returncode == 0

    # 1024 x 1024 x 16 bit x 120 frames: a 250 MB multi-frame instance.
    big_ds = instance(rows=1024, columns=1024, frames=120)
    big = write(big_ds, tmp_path / "big.dcm")
    sender = subprocess.Popen(
        [dcmtk("storescu"), "-aec", any_huren.ae_title, "127.0.0.1", str(any_huren.dicom_port), str(big)],
        env=dcmtk_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    spool = Path(any_huren.config["ingest"]["receive_folder"])
    deadline = time.monotonic() + 60
    while _spooled_bytes(spool) < 40 * 1024**2 and time.monotonic() < deadline and sender.poll() is None:
        time.sleep(0.01)
    assert sender.poll() is None, "the store finished before the server could be killed"
    any_huren.stop(signal.SIGKILL)
    sender.wait(60)
    assert sender.returncode != 0  # the sender was never told the instance was stored

    any_huren.start()
    config = Config.model_validate(any_huren.config)
    keys = set(open_store(config).keys())
    engine = create_engine(config.index.url)
    with engine.connect() as conn:
        rows = {key: digest for key, digest in conn.execute(text("SELECT blob_key, sha256 FROM instances"))}
    engine.dispose()
    assert set(rows) == keys  # no index row without its object, no object without its row
    big_key = f"{big_ds.StudyInstanceUID}/{big_ds.SeriesInstanceUID}/{big_ds.SOPInstanceUID}.dcm"
    if big_key in rows:  # wholly present: the stored bytes are the ones the index vouches for
        digest = hashlib.sha256(b"".join(open_store(config).read(big_key))).hexdigest()
        assert digest == rows[big_key]
    assert len(DICOMwebClient(any_huren.dicomweb).search_for_instances()) == len(rows) >= 1

    # The sender retries, as a modality does after a failed association: it goes through.
    assert any_huren.storescu(big).returncode == 0
    retrieved = DICOMwebClient(any_huren.dicomweb).retrieve_instance(
        big_ds.StudyInstanceUID, big_ds.SeriesInstanceUID, big_ds.SOPInstanceUID)
    assert retrieved.PixelData == big_ds.PixelData
