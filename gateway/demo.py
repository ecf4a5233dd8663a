"""The embedded demo archive: real sample files that pydicom (and pydicom-data) ship, copied to
`<directory>/files` and indexed in `<directory>/index.sqlite`, served by an ordinary DB
connector through its file-path column (see `config/gateway.yml`).

Built once, on the first start; delete the directory to rebuild it.
"""

from __future__ import annotations

import fcntl
import logging
import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pydicom
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

log = logging.getLogger("gateway.demo")

#: CT, MR, multi-frame (RT dose, ultrasound of 30 and 120 frames, enhanced MR), compressed
#: (JPEG baseline and lossless, RLE, JPEG 2000) and a segmentation. A file whose SOP Instance
#: UID an earlier one already has is given UIDs of its own (`distinct_uids`).
SAMPLE_NAMES = (
    "CT_small.dcm",
    "MR_small.dcm",
    "rtdose.dcm",
    "examples_ybr_color.dcm",
    "emri_small.dcm",
    "JPGLosslessP14SV1_1s_1f_8b.dcm",
    "SC_rgb_rle.dcm",
    "SC_rgb_jpeg_dcmtk.dcm",
    "liver.dcm",
    "693_J2KI.dcm",
    "color3d_jpeg_baseline.dcm",  # 120 frames; shares its UIDs with examples_ybr_color.dcm
)

SCHEMA = """
CREATE TABLE patient (pk INTEGER PRIMARY KEY, pat_id TEXT, pat_name TEXT, pat_birthdate TEXT,
                      pat_sex TEXT);
CREATE TABLE study (pk INTEGER PRIMARY KEY, patient_fk INTEGER REFERENCES patient(pk),
                    study_iuid TEXT UNIQUE, study_date TEXT, study_time TEXT, accession_no TEXT,
                    study_id TEXT, ref_physician TEXT, study_desc TEXT);
CREATE TABLE series (pk INTEGER PRIMARY KEY, study_fk INTEGER REFERENCES study(pk),
                     series_iuid TEXT UNIQUE, modality TEXT, series_no INTEGER, series_desc TEXT);
CREATE TABLE instance (pk INTEGER PRIMARY KEY, series_fk INTEGER REFERENCES series(pk),
                       sop_iuid TEXT UNIQUE, sop_cuid TEXT, inst_no INTEGER, num_rows INTEGER,
                       num_columns INTEGER, bits_allocated INTEGER, num_frames INTEGER,
                       tsuid TEXT, file_path TEXT);
"""


def sample_paths() -> Iterator[Path]:
    """The sample files that are installed (pydicom-data provides some of them)."""
    for name in SAMPLE_NAMES:
        path = get_testdata_file(name)
        if path is None:
            log.warning("demo sample %s is not installed (pip install pydicom-data)", name)
            continue
        yield Path(str(path))


def distinct_uids(ds: pydicom.Dataset, name: str) -> None:
    """New Study, Series and SOP Instance UIDs for a sample that shares its UIDs with another
    (color3d_jpeg_baseline.dcm is the 120-frame version of examples_ybr_color.dcm), derived
    from the file name and the old UIDs so that every build gives the same ones."""
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
        setattr(ds, keyword, generate_uid(entropy_srcs=[name, str(ds.get(keyword, ""))]))
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID


def ensure_demo_archive(directory: str) -> None:
    """Builds the archive unless it exists. gunicorn workers start together: the first one
    builds it under an exclusive lock, the others wait for it and find it done."""
    root = Path(directory)
    index = root / "index.sqlite"
    if index.exists():
        return
    root.mkdir(parents=True, exist_ok=True)
    with (root / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not index.exists():
            _build(root, index)


def _build(root: Path, index: Path) -> None:
    files = root / "files"
    files.mkdir(exist_ok=True)
    partial = root / "index.sqlite.partial"
    partial.unlink(missing_ok=True)
    with sqlite3.connect(partial) as db:
        db.executescript(SCHEMA)
        count = sum(_add(db, path, files) for path in sample_paths())
    partial.rename(index)
    log.info("demo archive built with %d instances", count)


def _add(db: sqlite3.Connection, source: Path, files: Path) -> int:
    ds = pydicom.dcmread(source, stop_before_pixels=True)
    taken = "SELECT 1 FROM instance WHERE sop_iuid = ?"
    if db.execute(taken, (ds.SOPInstanceUID,)).fetchone():
        ds = pydicom.dcmread(source)
        distinct_uids(ds, source.name)
        name = f"{ds.SOPInstanceUID}.dcm"
        ds.save_as(files / name, enforce_file_format=True)
    else:
        name = f"{ds.SOPInstanceUID}.dcm"
        shutil.copyfile(source, files / name)
    patient = _row(
        db,
        "patient",
        "pat_id",
        str(ds.get("PatientID", "")),
        {
            "pat_name": str(ds.get("PatientName", "")),
            "pat_birthdate": ds.get("PatientBirthDate", ""),
            "pat_sex": ds.get("PatientSex", ""),
        },
    )
    study = _row(
        db,
        "study",
        "study_iuid",
        ds.StudyInstanceUID,
        {
            "patient_fk": patient,
            "study_date": ds.get("StudyDate", ""),
            "study_time": ds.get("StudyTime", ""),
            "accession_no": ds.get("AccessionNumber", ""),
            "study_id": ds.get("StudyID", ""),
            "ref_physician": str(ds.get("ReferringPhysicianName", "")),
            "study_desc": ds.get("StudyDescription", ""),
        },
    )
    series = _row(
        db,
        "series",
        "series_iuid",
        ds.SeriesInstanceUID,
        {
            "study_fk": study,
            "modality": ds.get("Modality", ""),
            "series_no": _int(ds.get("SeriesNumber")),
            "series_desc": ds.get("SeriesDescription", ""),
        },
    )
    _row(
        db,
        "instance",
        "sop_iuid",
        ds.SOPInstanceUID,
        {
            "series_fk": series,
            "sop_cuid": ds.SOPClassUID,
            "inst_no": _int(ds.get("InstanceNumber")),
            "num_rows": ds.get("Rows"),
            "num_columns": ds.get("Columns"),
            "bits_allocated": ds.get("BitsAllocated"),
            "num_frames": _int(ds.get("NumberOfFrames")),
            "tsuid": ds.file_meta.TransferSyntaxUID,
            "file_path": name,
        },
    )
    return 1


def _int(value: object) -> int | None:
    try:
        return int(str(value)) if value not in (None, "") else None
    except ValueError:
        return None


def _row(
    db: sqlite3.Connection, table: str, key: str, value: str, columns: dict[str, object]
) -> int:
    """The primary key of the row whose `key` is `value`, inserted with `columns` if new.
    Table and column names are this module's constants; values are bound."""
    found = db.execute(f"SELECT pk FROM {table} WHERE {key} = ?", (value,)).fetchone()
    if found:
        return int(found[0])
    names = [key, *columns]
    values = [
        value,
        *(None if v is None else str(v) if not isinstance(v, int) else v for v in columns.values()),
    ]
    marks = ", ".join("?" for _ in names)
    cursor = db.execute(f"INSERT INTO {table} ({', '.join(names)}) VALUES ({marks})", values)
    return int(cursor.lastrowid or 0)
