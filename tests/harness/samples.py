"""The sample set: real DICOM files from pydicom's test data and the pydicom-data package.

Ground truth for the tests is read from these files with pydicom (`sample_index()`), never from
the code under test or from a backend.
"""

from __future__ import annotations

import functools
import os
import tempfile
from pathlib import Path
from typing import TypedDict

import pydicom
from pydicom.data import get_testdata_file

from gateway.demo import SAMPLE_NAMES as DEMO_SAMPLES
from gateway.demo import distinct_uids

# The demo archive's sample set (CT, MR, multi-frame RT dose / ultrasound / enhanced MR, JPEG
# baseline and lossless, RLE, JPEG 2000, a segmentation): the tests use the same real files.
SAMPLE_NAMES: tuple[str, ...] = DEMO_SAMPLES

class SampleInfo(TypedDict):
    """Ground truth for one sample file. Strings are the file's values as pydicom reads them
    ("" when the attribute is absent or empty; PatientName as its DICOM string, e.g.
    "CompressedSamples^CT1"). TransferSyntaxUID comes from the file meta information.
    NumberOfFrames is the file's (0028,0008) as an int, or None when the file has no such
    attribute (single-frame objects)."""

    path: Path
    StudyInstanceUID: str
    SeriesInstanceUID: str
    SOPInstanceUID: str
    SOPClassUID: str
    TransferSyntaxUID: str
    PatientID: str
    PatientName: str
    Modality: str
    StudyDate: str
    NumberOfFrames: int | None


def sample_files() -> list[Path]:
    """Absolute paths of the sample files, in SAMPLE_NAMES order. Raises if one is missing
    (pydicom-data not installed) or if two share a SOPInstanceUID."""
    sample_index()  # validates the set once (cached)
    return [_path_of(name) for name in SAMPLE_NAMES]


@functools.cache
def _path_of(name: str) -> Path:
    found = get_testdata_file(name)
    if found is None:
        raise FileNotFoundError(
            f"sample {name} not found by pydicom.data.get_testdata_file: pip install pydicom-data"
        )
    path = Path(str(found)).resolve()
    return _with_own_uids(path) if name in SHARED_UIDS else path


#: Samples that share their UIDs with an earlier one: served with UIDs of their own, made the
#: way the demo archive makes them (gateway.demo.distinct_uids).
SHARED_UIDS = ("color3d_jpeg_baseline.dcm",)


def _with_own_uids(path: Path) -> Path:
    """A copy of `path` with distinct UIDs, written once per machine (atomically) and reused."""
    folder = Path(tempfile.gettempdir()) / "gateway-test-samples"
    folder.mkdir(exist_ok=True)
    target = folder / path.name
    if not target.exists():
        ds = pydicom.dcmread(path)
        distinct_uids(ds, path.name)
        partial = folder / f"{path.name}.{os.getpid()}.partial"
        ds.save_as(partial, enforce_file_format=True)
        partial.replace(target)
    return target


def _text(ds: pydicom.Dataset, keyword: str) -> str:
    value = ds.get(keyword)
    return "" if value is None else str(value)


def _read_info(path: Path) -> SampleInfo:
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    frames = ds.get("NumberOfFrames")
    return SampleInfo(
        path=path,
        StudyInstanceUID=_text(ds, "StudyInstanceUID"),
        SeriesInstanceUID=_text(ds, "SeriesInstanceUID"),
        SOPInstanceUID=_text(ds, "SOPInstanceUID"),
        SOPClassUID=_text(ds, "SOPClassUID"),
        TransferSyntaxUID=str(ds.file_meta.TransferSyntaxUID),
        PatientID=_text(ds, "PatientID"),
        PatientName=_text(ds, "PatientName"),
        Modality=_text(ds, "Modality"),
        StudyDate=_text(ds, "StudyDate"),
        NumberOfFrames=int(frames) if frames not in (None, "") else None,
    )


@functools.cache
def _index() -> dict[str, SampleInfo]:
    index = {name: _read_info(_path_of(name)) for name in SAMPLE_NAMES}
    sops = [info["SOPInstanceUID"] for info in index.values()]
    if len(set(sops)) != len(sops):
        raise ValueError("two sample files share a SOPInstanceUID")
    return index


def sample_index() -> dict[str, SampleInfo]:
    """Ground truth per sample file, keyed by file name (the SAMPLE_NAMES entries), each value a
    SampleInfo read with pydicom. A fresh dict each call (the files are read once)."""
    return dict(_index())


def studies() -> list[str]:
    """The distinct StudyInstanceUIDs of the sample set, sorted."""
    return sorted({info["StudyInstanceUID"] for info in _index().values()})


def series_of(study: str) -> list[str]:
    """The distinct SeriesInstanceUIDs of the samples in `study`, sorted ([] if unknown)."""
    infos = _index().values()
    return sorted({i["SeriesInstanceUID"] for i in infos if i["StudyInstanceUID"] == study})


def instances_of(series: str) -> list[str]:
    """The SOPInstanceUIDs of the samples in `series`, sorted ([] if unknown)."""
    infos = _index().values()
    return sorted({i["SOPInstanceUID"] for i in infos if i["SeriesInstanceUID"] == series})


def patients() -> list[str]:
    """The distinct PatientIDs of the sample set, sorted ("" is one of them: two samples have
    an empty PatientID)."""
    return sorted({info["PatientID"] for info in _index().values()})


def info_of(sop_instance_uid: str) -> SampleInfo:
    """The SampleInfo of the sample with this SOPInstanceUID (KeyError if none)."""
    for info in _index().values():
        if info["SOPInstanceUID"] == sop_instance_uid:
            return info
    raise KeyError(sop_instance_uid)
