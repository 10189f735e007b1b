"""DICOMweb against dicomweb-client: STOW-RS in; QIDO-RS, WADO-RS, metadata, bulk data and frames out.

Each end-to-end test runs on the embedded defaults (folder + SQLite) and on
S3 (moto's server over HTTP) with a PostgreSQL index.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import pytest
from dicomweb_client.api import DICOMwebClient
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.pixels import pixel_array
from pydicom.sequence import Sequence
from pydicom.uid import generate_uid

from tests.conftest import PYDICOM_FILES, Huren, huren_config
from tests.factory import instance

ICC = bytes(range(256)) * 12  # 3 KiB: above the 1 KiB bulk threshold, so served by BulkDataURI


def client(huren: Huren) -> DICOMwebClient:
    return DICOMwebClient(huren.dicomweb)


def a_study(patient_id: str = "P0001", **attributes) -> list[Dataset]:
    """A CT study: a 3-slice series and a 4-frame series, with bulk values in and out of sequences."""
    study = generate_uid()
    thin, multi = generate_uid(), generate_uid()
    slices = [instance(StudyInstanceUID=study, SeriesInstanceUID=thin, PatientID=patient_id,
                       SeriesNumber=1, InstanceNumber=n, **attributes) for n in (1, 2, 3)]
    slices[0].ICCProfile = ICC
    item = Dataset()
    item.OpticalPathIdentifier = "1"
    item.ICCProfile = ICC[::-1]
    slices[1].OpticalPathSequence = Sequence([item])
    frames = instance(StudyInstanceUID=study, SeriesInstanceUID=multi, PatientID=patient_id,
                      SeriesNumber=2, InstanceNumber=1, Modality="CT", frames=4, **attributes)
    return [*slices, frames]


def same_dataset(sent: Dataset, received: Dataset) -> None:
    """Element for element equal, pixel data byte for byte (file meta may differ)."""
    assert sorted(e.tag for e in sent) == sorted(e.tag for e in received)
    for element in sent:
        assert received[element.tag] == element, element.keyword


def test_store_search_retrieve(any_huren: Huren) -> None:
    web = client(any_huren)
    datasets = a_study()
    study = datasets[0].StudyInstanceUID
    answer = web.store_instances(datasets)
    stored = answer.ReferencedSOPSequence
    assert {i.ReferencedSOPInstanceUID for i in stored} == {d.SOPInstanceUID for d in datasets}
    assert "FailedSOPSequence" not in answer
    # RetrieveURL must be usable as given: the client's own host and port.
    assert answer.RetrieveURL == f"{any_huren.dicomweb}/studies/{study}"
    assert httpx.get(stored[0].RetrieveURL + "/metadata").status_code == 200

    [found] = web.search_for_studies(search_filters={"PatientID": "P0001"})
    assert found["0020000D"]["Value"] == [study]
    assert found["00201206"]["Value"] == [2]   # NumberOfStudyRelatedSeries
    assert found["00201208"]["Value"] == [4]   # NumberOfStudyRelatedInstances
    assert found["00080061"]["Value"] == ["CT"]
    assert found["00081190"]["Value"] == [f"{any_huren.dicomweb}/studies/{study}"]
    series = web.search_for_series(study)
    assert [s["00200011"]["Value"][0] for s in series] == [1, 2]
    thin = datasets[0].SeriesInstanceUID
    assert [i["00200013"]["Value"][0] for i in web.search_for_instances(study, thin)] == [1, 2, 3]

    sent = {d.SOPInstanceUID: d for d in datasets}
    for received in web.retrieve_study(study):
        same_dataset(sent[received.SOPInstanceUID], received)
    assert len(web.retrieve_series(study, thin)) == 3
    one = datasets[3]
    same_dataset(one, web.retrieve_instance(study, one.SeriesInstanceUID, one.SOPInstanceUID))


def test_metadata_and_bulk_data(any_huren: Huren) -> None:
    web = client(any_huren)
    datasets = a_study()
    web.store_instances(datasets)
    study = datasets[0].StudyInstanceUID
    documents = web.retrieve_study_metadata(study)
    assert len(documents) == 4
    sent = {d.SOPInstanceUID: d for d in datasets}
    for document in documents:
        original = sent[document["00080018"]["Value"][0]]
        expected = original.to_json_dict(bulk_data_threshold=1024,
                                         bulk_data_element_handler=lambda e: "bulk")
        assert document.keys() == expected.keys()
        for key, value in document.items():
            if "BulkDataURI" in value:
                assert value["BulkDataURI"].startswith(any_huren.dicomweb + "/studies/")
            elif key == "00480105":
                continue  # the sequence's bulk value is checked below
            else:
                assert value == expected[key], key

    first, second = datasets[0], datasets[1]
    document = web.retrieve_instance_metadata(study, first.SeriesInstanceUID, first.SOPInstanceUID)
    assert web.retrieve_bulkdata(document["00282000"]["BulkDataURI"]) == [ICC]
    assert web.retrieve_bulkdata(document["7FE00010"]["BulkDataURI"]) == [first.PixelData]
    [document] = web.retrieve_series_metadata(study, second.SeriesInstanceUID)[1:2]
    nested = document["00480105"]["Value"][0]["00282000"]["BulkDataURI"]
    assert nested.endswith("/bulkdata/00480105/0/00282000")
    assert web.retrieve_bulkdata(nested) == [ICC[::-1]]


def test_frames_of_native_pixel_data(huren: Huren) -> None:
    web = client(huren)
    datasets = a_study()
    web.store_instances(datasets)
    multi = datasets[3]
    uids = multi.StudyInstanceUID, multi.SeriesInstanceUID, multi.SOPInstanceUID
    size = 16 * 16 * 2
    frames = web.retrieve_instance_frames(*uids, frame_numbers=[4, 2])
    assert frames == [multi.PixelData[3 * size:4 * size], multi.PixelData[size:2 * size]]
    base = f"{huren.dicomweb}/studies/{uids[0]}/series/{uids[1]}/instances/{uids[2]}"
    assert httpx.get(base + "/frames/5").status_code == 404
    assert httpx.get(base + "/frames/0").status_code == 400
    assert httpx.get(base + "/frames/one").status_code == 400
    refused = httpx.get(base + "/frames/1", headers={"Accept": 'multipart/related; type="image/jpeg"'})
    assert refused.status_code == 406


def test_frames_of_compressed_pixel_data(huren: Huren) -> None:
    """JPEG frames go out as stored when accepted, else decoded to native pixels."""
    path = PYDICOM_FILES / "SC_rgb_jpeg_dcmtk.dcm"
    original = dcmread(path)
    web = client(huren)
    web.store_instances([original])
    uids = original.StudyInstanceUID, original.SeriesInstanceUID, original.SOPInstanceUID
    as_stored = web.retrieve_instance_frames(*uids, frame_numbers=[1],
                                            media_types=(("image/jpeg", "1.2.840.10008.1.2.4.50"),))
    assert as_stored[0].startswith(b"\xff\xd8") and as_stored[0].rstrip(b"\0").endswith(b"\xff\xd9")
    [native] = web.retrieve_instance_frames(*uids, frame_numbers=[1],
                                            media_types=("application/octet-stream",))
    assert native == pixel_array(path).tobytes()


def test_bulk_data_of_deflated_and_big_endian_files(huren: Huren) -> None:
    """Files whose bulk values cannot be read by byte range are parsed whole; BE values are swapped."""
    web = client(huren)
    for name in ("image_dfl.dcm", "MR_small_bigendian.dcm"):
        original = dcmread(PYDICOM_FILES / name)
        web.store_instances([original])
        uids = original.StudyInstanceUID, original.SeriesInstanceUID, original.SOPInstanceUID
        document = web.retrieve_instance_metadata(*uids)
        [pixels] = web.retrieve_bulkdata(document["7FE00010"]["BulkDataURI"])
        assert np.array_equal(np.frombuffer(pixels, original.pixel_array.dtype.newbyteorder("<")),
                              original.pixel_array.ravel()), name


def test_qido_matching(huren: Huren) -> None:
    web = client(huren)
    for n, (name, date) in enumerate([("WANG^LI", "20260105"), ("WANG^FANG", "20260120"),
                                      ("LI^NA", "20260301")]):
        web.store_instances(a_study(f"P{n}", PatientName=name, StudyDate=date)[:1])

    def patients(**filters) -> list[str]:
        found = web.search_for_studies(search_filters=filters)
        return sorted(s["00100020"]["Value"][0] for s in found)

    assert patients(PatientName="WANG*") == ["P0", "P1"]
    assert patients(PatientName="wang^f?ng") == ["P1"]           # names match case-insensitively
    assert patients(StudyDate="20260101-20260131") == ["P0", "P1"]
    assert patients(StudyDate="20260201-") == ["P2"]
    assert patients(StudyDate="-20260105") == ["P0"]
    assert patients(PatientID="P0,P2") == []                      # PatientID is not a UID list
    uids = [s["0020000D"]["Value"][0] for s in web.search_for_studies()]
    assert len(web.search_for_studies(search_filters={"StudyInstanceUID": ",".join(uids[:2])})) == 2
    page = web.search_for_studies(limit=2, offset=1)
    assert [s["0020000D"]["Value"][0] for s in page] == uids[1:3]
    [series] = web.search_for_series(fields=["BodyPartExamined"], search_filters={"PatientID": "P2"})
    assert series["00180015"]["Value"] == ["CHEST"]


def test_qido_caps_answers_and_says_so(tmp_path: Path) -> None:
    server = Huren(tmp_path, huren_config(tmp_path, http={"max_query_results": 2})).start()
    try:
        client(server).store_instances([d for n in range(3) for d in a_study(f"P{n}")[:1]])
        capped = httpx.get(server.dicomweb + "/studies")
        assert len(capped.json()) == 2
        assert "exceeded the maximum" in capped.headers["warning"]
        asked = httpx.get(server.dicomweb + "/studies", params={"limit": 2})
        assert len(asked.json()) == 2 and "warning" not in asked.headers
        rest = httpx.get(server.dicomweb + "/studies", params={"offset": 2})
        assert len(rest.json()) == 1 and "warning" not in rest.headers
    finally:
        server.stop()


@pytest.mark.parametrize("params, parameter", [
    ({"NoSuchAttribute": "x"}, "NoSuchAttribute"),
    ({"StudyDate": "2026-01-01"}, "StudyDate"),
    ({"StudyDate": "20261301"}, "StudyDate"),
    ({"StudyTime": "25"}, "StudyTime"),
    ({"limit": "ten"}, "limit"),
    ({"limit": "0"}, "limit"),
    ({"offset": "-1"}, "offset"),
    ({"fuzzymatching": "maybe"}, "fuzzymatching"),
    ({"includefield": "NotAKeyword"}, "NotAKeyword"),
])
def test_qido_bad_parameters(huren: Huren, params: dict[str, str], parameter: str) -> None:
    answer = httpx.get(huren.dicomweb + "/studies", params=params)
    assert answer.status_code == 400, answer.text
    assert answer.json()["parameter"] == parameter
    assert answer.json()["error"]


def test_qido_names_unsupported_keys_in_a_warning(huren: Huren) -> None:
    answer = httpx.get(huren.dicomweb + "/studies", params={"ReferencedStudySequence.StudyInstanceUID": "1"})
    assert answer.status_code == 200
    assert "ReferencedStudySequence.StudyInstanceUID" in answer.headers["warning"]


def test_qido_with_no_match_is_an_empty_list(huren: Huren) -> None:
    answer = httpx.get(huren.dicomweb + "/studies", params={"PatientID": "nobody"})
    assert answer.status_code == 200 and answer.json() == []


def test_wado_unknown_uids_are_404(huren: Huren) -> None:
    datasets = a_study()
    client(huren).store_instances(datasets)
    known = datasets[0]
    base = f"{huren.dicomweb}/studies/{known.StudyInstanceUID}"
    for url in (f"{huren.dicomweb}/studies/1.2.3.4", f"{huren.dicomweb}/studies/1.2.3.4/metadata",
                f"{base}/series/1.2.3", f"{base}/series/{known.SeriesInstanceUID}/instances/1.2.3",
                f"{base}/series/{known.SeriesInstanceUID}/instances/1.2.3/metadata",
                f"{base}/series/{known.SeriesInstanceUID}/instances/{known.SOPInstanceUID}/bulkdata/00091234"):
        answer = httpx.get(url)
        assert answer.status_code == 404, url
        assert answer.json()["error"]


def test_wado_accept_negotiation(huren: Huren) -> None:
    original = dcmread(PYDICOM_FILES / "JPEG2000.dcm")
    client(huren).store_instances([original])
    url = (f"{huren.dicomweb}/studies/{original.StudyInstanceUID}/series/{original.SeriesInstanceUID}"
           f"/instances/{original.SOPInstanceUID}")
    assert httpx.get(url, headers={"Accept": "image/png"}).status_code == 406
    refused = httpx.get(url, headers={"Accept": 'multipart/related; type="application/dicom"; '
                                                 'transfer-syntax=1.2.840.10008.1.2.4.50'})
    assert refused.status_code == 406
    web = client(huren)
    decoded = web.retrieve_instance(*url.split("/")[-5::2],
                                    media_types=(("application/dicom", "1.2.840.10008.1.2.1"),))
    assert decoded.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
    assert np.array_equal(decoded.pixel_array, original.pixel_array)
    as_stored = web.retrieve_instance(*url.split("/")[-5::2])
    assert as_stored.file_meta.TransferSyntaxUID == original.file_meta.TransferSyntaxUID
    assert as_stored.PixelData == original.PixelData
