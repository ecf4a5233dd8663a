"""A small PACS-like database for the DB connector's tests, on SQLite, PostgreSQL and MariaDB.

Tables `patient`, `study`, `series`, `instance` (foreign keys, column names as a PACS would
have them, not the gateway's labels) are filled from pydicom's sample files (read with pydicom:
the ground truth) and from synthetic rows (`SYNTHETIC`) for wildcard escaping, date ranges,
fuzzy names and several series per study. The files are copied under a storage root, which
is the connectors' `file-path-root`.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
import sqlalchemy as sa
from pydicom.data import get_testdata_file
from sqlalchemy.dialects import mysql

SAMPLE_NAMES = (
    "CT_small.dcm", "MR_small.dcm", "rtdose.dcm", "emri_small.dcm", "SC_rgb_rle.dcm",
    "SC_rgb_jpeg_dcmtk.dcm", "liver.dcm",
)  # fmt: skip
PG_ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
MARIADB_ADMIN = "mysql+pymysql://root@127.0.0.1:3306/"
ADMIN_TIMEOUT = 10  # seconds

#: Viewer-Hub style: joins, one row per instance, ends in WHERE; labels snake_case or camelCase;
#: literal `%` and `:` in the text (neither is a parameter).
SELECT = """
SELECT pa.pk AS patient_pk, pa.pat_name AS patientName, pa.pat_id AS patient_id,
       pa.pat_birthdate AS patient_birth_date, pa.pat_sex AS patient_sex,
       st.study_iuid AS study_instance_uid, st.study_datetime AS study_date_time,
       st.accession_no AS accession_number, st.study_id AS study_id,
       st.ref_physician AS referring_physician_name, st.study_desc AS study_description,
       se.series_iuid AS series_instance_uid, se.modality AS modality,
       se.series_no AS series_number, se.series_desc AS series_description,
       se.series_date AS series_date, se.series_time AS series_time,
       im.sop_iuid AS sop_instance_uid, im.sop_cuid AS sop_class_uid,
       im.inst_no AS instance_number, im.num_rows AS rows_, im.num_cols AS columns_,
       im.bits_alloc AS bits_allocated, im.num_frames AS numberOfFrames,
       im.content_time AS content_time, im.acquired_at AS acquisition_date_time,
       im.storage_path AS stored_file
FROM patient pa, study st, series se, instance im
WHERE im.series_fk = se.pk AND se.study_fk = st.pk AND st.patient_fk = pa.pk
  AND st.study_iuid LIKE '%.%' AND im.sop_iuid <> 'x:y'
"""
#: The `*-column` keys of that select (Viewer-Hub: the column used in the appended filter).
ID_COLUMNS = {
    "patient_id_column": "pa.pat_id",
    "accession_number_column": "st.accession_no",
    "study_instance_uid_column": "st.study_iuid",
    "serie_instance_uid_column": "se.series_iuid",
    "sop_instance_uid_column": "im.sop_iuid",
}
FILE_LABEL = "stored_file"

_STAMP = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")
_CLOCK = sa.Time().with_variant(mysql.TIME(fsp=6), "mysql", "mariadb")
metadata = sa.MetaData()
patient = sa.Table(
    "patient", metadata,
    sa.Column("pk", sa.Integer, primary_key=True),
    sa.Column("pat_id", sa.String(64)),
    sa.Column("pat_name", sa.String(255)),
    sa.Column("pat_birthdate", sa.Date),
    sa.Column("pat_sex", sa.String(16)),
)  # fmt: skip
study = sa.Table(
    "study", metadata,
    sa.Column("pk", sa.Integer, primary_key=True),
    sa.Column("patient_fk", sa.Integer, sa.ForeignKey("patient.pk"), nullable=False),
    sa.Column("study_iuid", sa.String(64), nullable=False, unique=True),
    sa.Column("study_datetime", _STAMP),
    sa.Column("accession_no", sa.String(64)),
    sa.Column("study_id", sa.String(64)),
    sa.Column("ref_physician", sa.String(255)),
    sa.Column("study_desc", sa.String(255)),
)  # fmt: skip
series = sa.Table(
    "series", metadata,
    sa.Column("pk", sa.Integer, primary_key=True),
    sa.Column("study_fk", sa.Integer, sa.ForeignKey("study.pk"), nullable=False),
    sa.Column("series_iuid", sa.String(64), nullable=False, unique=True),
    sa.Column("modality", sa.String(16)),
    sa.Column("series_no", sa.Integer),
    sa.Column("series_desc", sa.String(255)),
    sa.Column("series_date", sa.String(8)),  # DICOM DA text
    sa.Column("series_time", sa.String(16)),  # DICOM TM text
)  # fmt: skip
instance = sa.Table(
    "instance", metadata,
    sa.Column("pk", sa.Integer, primary_key=True),
    sa.Column("series_fk", sa.Integer, sa.ForeignKey("series.pk"), nullable=False),
    sa.Column("sop_iuid", sa.String(64), nullable=False, unique=True),
    sa.Column("sop_cuid", sa.String(64)),
    sa.Column("inst_no", sa.Integer),
    sa.Column("num_rows", sa.Integer),
    sa.Column("num_cols", sa.Integer),
    sa.Column("bits_alloc", sa.Integer),
    sa.Column("num_frames", sa.Integer),
    sa.Column("content_time", _CLOCK),  # a TIME column
    sa.Column("acquired_at", _STAMP),  # a timestamp for AcquisitionDateTime (DT)
    sa.Column("storage_path", sa.String(512)),
)  # fmt: skip
TABLES = (patient, study, series, instance)


@dataclass(frozen=True)
class Row:
    """One instance row, named after the table columns (None = NULL)."""

    pat_id: str | None
    pat_name: str | None
    pat_birthdate: dt.date | None
    pat_sex: str | None
    study_iuid: str
    study_datetime: dt.datetime | None
    accession_no: str | None
    study_id: str | None
    ref_physician: str | None
    study_desc: str | None
    series_iuid: str
    modality: str | None
    series_no: int | None
    series_desc: str | None
    series_date: str | None
    series_time: str | None
    sop_iuid: str
    sop_cuid: str | None
    inst_no: int | None
    num_rows: int | None = None
    num_cols: int | None = None
    bits_alloc: int | None = None
    num_frames: int | None = None
    content_time: dt.time | None = None
    acquired_at: dt.datetime | None = None
    storage_path: str | None = None


def _text(ds: pydicom.Dataset, keyword: str) -> str | None:
    value = ds.get(keyword)
    return None if value in (None, "") else str(value).strip()


def _int(ds: pydicom.Dataset, keyword: str) -> int | None:
    value = ds.get(keyword)
    return None if value in (None, "") else int(value)


def _parsed(text: str | None, form: str) -> dt.datetime | None:
    return dt.datetime.strptime(text, form) if text else None


def sample_path(name: str) -> Path:
    found = get_testdata_file(name)
    if found is None:
        raise FileNotFoundError(f"{name}: pip install pydicom-data")
    return Path(str(found))


def sample_row(name: str) -> Row:
    """A sample file's row, every value read from the file with pydicom."""
    ds = pydicom.dcmread(sample_path(name), stop_before_pixels=True)
    birth = _parsed(_text(ds, "PatientBirthDate"), "%Y%m%d")
    date, time = _text(ds, "StudyDate"), _text(ds, "StudyTime") or "000000"
    clock = _parsed(_text(ds, "ContentTime"), "%H%M%S")
    acquired = _text(ds, "AcquisitionDateTime")
    return Row(
        _text(ds, "PatientID"), _text(ds, "PatientName"), birth.date() if birth else None,
        _text(ds, "PatientSex"), str(ds.StudyInstanceUID),
        _parsed(date and date + time[:6], "%Y%m%d%H%M%S"), _text(ds, "AccessionNumber"),
        _text(ds, "StudyID"), _text(ds, "ReferringPhysicianName"), _text(ds, "StudyDescription"),
        str(ds.SeriesInstanceUID), _text(ds, "Modality"), _int(ds, "SeriesNumber"),
        _text(ds, "SeriesDescription"), _text(ds, "SeriesDate"), _text(ds, "SeriesTime"),
        str(ds.SOPInstanceUID), _text(ds, "SOPClassUID"), _int(ds, "InstanceNumber"),
        _int(ds, "Rows"), _int(ds, "Columns"), _int(ds, "BitsAllocated"),
        _int(ds, "NumberOfFrames"), clock.time() if clock else None,
        _parsed(acquired, "%Y%m%d%H%M%S.%f"), f"samples/{name}",
    )  # fmt: skip


def _synthetic(
    n: int, pid: str, name: str, when: dt.datetime, desc: str, accession: str,
    modality: str = "CT", birth: dt.date | None = None, series_n: int = 1,
    path: str | None = None,
) -> Row:  # fmt: skip
    """Study `2.25.90n`; its instance file is missing (or at `path`); acquired at `when`."""
    root = f"2.25.{900 + n}"
    return Row(
        pid, name, birth, "O", root, when, accession, f"S{n}", None, desc,
        f"{root}.{series_n}", modality, series_n, None, None, None, f"{root}.{series_n}.1",
        "1.2.840.10008.5.1.4.1.1.7", 1, acquired_at=when,
        storage_path=path or f"missing/{n}-{series_n}.dcm",
    )  # fmt: skip


#: '%', '_' and '\' in values, a study at 23:59:59.5, case variants of a name, a study with
#: two series (CT and SR), a file that is missing (SYN4) and one outside the root (SYN5).
SYNTHETIC = (
    _synthetic(1, "SYN1", "Under_Score^A", dt.datetime(2021, 3, 1, 10, 0), "100% done",
               "ACC_1", birth=dt.date(1950, 6, 15)),
    _synthetic(1, "SYN1", "Under_Score^A", dt.datetime(2021, 3, 1, 10, 0), "100% done",
               "ACC_1", modality="SR", series_n=2),
    _synthetic(2, "SYN2", "UnderXScore^A", dt.datetime(2021, 3, 15, 23, 59, 59, 500000),
               "1000 done", "ACCX1", modality="MR", birth=dt.date(1960, 1, 1)),
    _synthetic(3, "SYN3", "under_score^a", dt.datetime(2021, 4, 1), "C:\\x\\y", "ACC3"),
    _synthetic(4, "SYN4", "Other^D", dt.datetime(2021, 4, 2, 8, 30), "C:xy", "ACC4"),
    _synthetic(5, "SYN5", "Escape^E", dt.datetime(2022, 1, 1, 12), "outside", "ACC5",
               path="../outside.dcm"),
)  # fmt: skip


def all_rows() -> list[Row]:
    return [sample_row(name) for name in SAMPLE_NAMES] + list(SYNTHETIC)


def load(engine: sa.Engine, rows: list[Row]) -> None:
    """Creates the schema and inserts `rows`: one patient per id, one study and one series per
    UID, one instance per row, each table's values taken from the row's fields of its name."""
    metadata.drop_all(engine)
    metadata.create_all(engine)
    keys = (lambda r: r.pat_id, lambda r: r.study_iuid, lambda r: r.series_iuid, lambda r: r)
    pks: list[dict[object, int]] = [{}, {}, {}, {}]
    with engine.begin() as conn:
        for r in rows:
            for level, table in enumerate(TABLES):
                if keys[level](r) in pks[level]:
                    continue
                pk = pks[level][keys[level](r)] = len(pks[level]) + 1
                values = {c.name: getattr(r, c.name) for c in table.c if hasattr(r, c.name)}
                if level:
                    parent = TABLES[level - 1].name
                    values[f"{parent}_fk"] = pks[level - 1][keys[level - 1](r)]
                conn.execute(table.insert().values(pk=pk, **values))


def store_files(root: Path) -> None:
    """Copies the sample files under `root/samples` and puts a file just outside `root`."""
    (root / "samples").mkdir(parents=True)
    for name in SAMPLE_NAMES:
        shutil.copyfile(sample_path(name), root / "samples" / name)
    shutil.copyfile(sample_path("CT_small.dcm"), root.parent / "outside.dcm")


@dataclass
class Database:
    """A loaded test database: its SQLAlchemy URI and the storage root of its files."""

    backend: str
    name: str
    uri: str
    root: Path
    rows: list[Row] = field(default_factory=all_rows)


def _admin_engine(url: str) -> sa.Engine:
    args = {"connect_timeout": ADMIN_TIMEOUT}
    return sa.create_engine(url, isolation_level="AUTOCOMMIT", connect_args=args)


@contextlib.contextmanager
def database(backend: str, workdir: Path) -> Iterator[Database]:
    """A fresh database `gwtest_db_<pid>` on `backend` (sqlite: a file in `workdir`), filled
    with `all_rows()`, dropped at the end; the sample files stored under `workdir/storage`."""
    root = workdir / "storage"
    store_files(root)
    name = f"gwtest_db_{os.getpid()}"
    if backend == "sqlite":
        uri, admin, drop = f"sqlite:///{workdir / 'pacs.sqlite'}", None, ""
    elif backend == "postgresql":
        uri, admin = f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}", PG_ADMIN
        drop = f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"
    else:
        uri, admin = f"mysql+pymysql://root@127.0.0.1:3306/{name}", MARIADB_ADMIN
        drop = f"DROP DATABASE IF EXISTS {name}"
    admin_engine = _admin_engine(admin) if admin else None
    if admin_engine is not None:
        with admin_engine.connect() as conn:
            conn.execute(sa.text(drop))
            conn.execute(sa.text(f"CREATE DATABASE {name}"))
    try:
        db = Database(backend, name, uri, root)
        engine = sa.create_engine(uri)
        try:
            load(engine, db.rows)
        finally:
            engine.dispose()
        yield db
    finally:
        if admin_engine is not None:
            with admin_engine.connect() as conn:
                conn.execute(sa.text(drop))
            admin_engine.dispose()
