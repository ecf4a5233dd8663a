"""gateway.part10.file_meta: the File Meta Information group (PS3.10 7.1) read from the bytes,
compared with pydicom's reading of every sample file."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest

from pydicom.data import get_testdata_files

from gateway.part10 import file_meta, identify
from tests.harness import samples

INDEX = samples.sample_index()


@pytest.mark.parametrize("name", sorted(INDEX))
def test_the_meta_of_every_sample_matches_pydicom(name: str) -> None:
    data = Path(INDEX[name]["path"]).read_bytes()
    meta = file_meta(data)
    expected = pydicom.dcmread(INDEX[name]["path"], stop_before_pixels=True).file_meta
    assert meta is not None
    assert meta[0x00020010] == expected.TransferSyntaxUID == INDEX[name]["TransferSyntaxUID"]
    assert meta[0x00020003] == expected.MediaStorageSOPInstanceUID
    assert meta[0x00020002] == expected.MediaStorageSOPClassUID


def test_bytes_without_the_dicm_prefix_have_no_meta() -> None:
    data = Path(INDEX["CT_small.dcm"]["path"]).read_bytes()
    assert file_meta(data[128:]) is None  # no preamble
    assert file_meta(b"\\x00" * 128 + b"DICX" + data[132:]) is None
    assert file_meta(b"") is None


def test_a_meta_cut_short_is_none() -> None:
    data = Path(INDEX["CT_small.dcm"]["path"]).read_bytes()
    assert file_meta(data[:150]) is None  # inside an element of group 0002


def test_identify_gives_the_data_sets_own_sop_instance_uid() -> None:
    """rtdose.dcm's meta names another instance than its data set (a real file's quirk): the
    data set's (0008,0018) is the one."""
    path = INDEX["rtdose.dcm"]["path"]
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    assert ds.file_meta.MediaStorageSOPInstanceUID != ds.SOPInstanceUID
    assert identify(Path(path).read_bytes()) == (ds.file_meta.TransferSyntaxUID, ds.SOPInstanceUID)


def test_identify_agrees_with_pydicom_on_every_sample_it_reads() -> None:
    read = 0
    for path in get_testdata_files("*.dcm"):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception:  # noqa: BLE001 - pydicom's deliberately broken samples
            continue
        found = identify(Path(path).read_bytes())
        if found is None:
            continue  # another encoding or no meta: the caller lets pydicom read it
        read += 1
        assert found == (str(ds.file_meta.TransferSyntaxUID), str(ds.get("SOPInstanceUID", ""))), path
    assert read >= 50  # the fast path covers most real files
