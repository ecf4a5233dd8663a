"""The DB connector against real databases: SQLite, PostgreSQL (127.0.0.1:5432) and MariaDB
(127.0.0.1:3306), each loaded with the same PACS-like schema (db_fixtures). Expected values come
from the sample files read with pydicom (`F.all_rows()`) or from the synthetic rows' definitions.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
import sqlalchemy as sa

from gateway import dicomjson
from gateway.connectors import db_match, db_sql
from gateway.connectors.base import ResourceRef, SearchResult
from gateway.connectors.db import DbConnector
from gateway.connectors.db_sql import plain_value
from gateway.connectors.db_url import to_sqlalchemy_url
from gateway.dicomjson import first, tag_of
from gateway.errors import ConnectorError, NotAcceptable, NotFound
from gateway.query import SERIES_UID, SOP_UID, STUDY_UID, Level, parse_search
from gateway.settings import Authentication, ConnectorSettings, DbQuery, Server, Timeouts
from gateway.settings import DbConnector as DbSettings
from tests.connectors import db_fixtures as F
from tests.harness.ports import free_port

ROWS = F.all_rows()
ALL_STUDIES = sorted({r.study_iuid for r in ROWS})
ALL_SERIES = sorted({r.series_iuid for r in ROWS})
SC = F.sample_row("SC_rgb_rle.dcm")  # same study and series as SC_rgb_jpeg_dcmtk.dcm
CT = F.sample_row("CT_small.dcm")
SYN = {r.pat_id: r for r in F.SYNTHETIC}
MODALITIES, STUDY_SERIES = tag_of("ModalitiesInStudy"), tag_of("NumberOfStudyRelatedSeries")
STUDY_INSTANCES = tag_of("NumberOfStudyRelatedInstances")
SERIES_INSTANCES = tag_of("NumberOfSeriesRelatedInstances")
BULK_BASE = "http://gw.test/dicomweb"


def settings(db: F.Database, id_columns: bool = True, **query: Any) -> ConnectorSettings:
    options: dict[str, Any] = {"file_path_column": F.FILE_LABEL, "file_path_root": str(db.root)}
    options.update(F.ID_COLUMNS if id_columns else {})
    options.update(query)
    uri = options.pop("uri", db.uri)
    select = options.pop("select", F.SELECT)
    db_settings = DbSettings(uri=uri, query=DbQuery(select=select, **options))
    return ConnectorSettings(id="pacs", type="DB", db=db_settings)


@pytest.fixture(scope="module", params=["sqlite", "postgresql", "mariadb"])
def database(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[F.Database]:
    with F.database(request.param, tmp_path_factory.mktemp(request.param)) as db:
        yield db


@pytest.fixture(scope="module", params=["id-columns", "subquery-only"])
def pacs(database: F.Database, request: pytest.FixtureRequest) -> Iterator[DbConnector]:
    """With the five `*-column` keys (appended IN) and without (all on the subquery)."""
    connector = DbConnector(settings(database, id_columns=request.param == "id-columns"))
    yield connector
    connector.close()


def search(c: DbConnector, level: Level, *pairs: tuple[str, str]) -> SearchResult:
    return c.search(parse_search(level, pairs))


def uids(result: SearchResult, tag: int = STUDY_UID) -> list[str]:
    return [first(d, tag) for d in result.datasets]


def studies(predicate: Callable[[F.Row], bool]) -> list[str]:
    return sorted({r.study_iuid for r in ROWS if predicate(r)})


# ---- levels, counts, ordering ----------------------------------------------------------------


def test_study_level_answers(pacs: DbConnector) -> None:
    result = search(pacs, Level.STUDY)
    assert uids(result) == ALL_STUDIES and result.complete and not result.unmatched
    ct = next(d for d in result.datasets if first(d, STUDY_UID) == CT.study_iuid)
    assert first(ct, tag_of("PatientName")) == {"Alphabetic": "CompressedSamples^CT1"}
    assert first(ct, tag_of("PatientID")) == "1CT1"
    assert (first(ct, tag_of("StudyDate")), first(ct, tag_of("StudyTime"))) == (
        "20040119",
        "072730",
    )
    assert first(ct, tag_of("InstanceAvailability")) == "ONLINE"
    assert ct[dicomjson.key(MODALITIES)]["Value"] == ["CT"]


def test_study_counts_cover_every_instance_of_the_study(pacs: DbConnector) -> None:
    one = search(pacs, Level.STUDY, ("SOPInstanceUID", SC.sop_iuid)).datasets
    assert [first(one[0], t) for t in (STUDY_UID, STUDY_SERIES, STUDY_INSTANCES)] == [
        SC.study_iuid,
        1,
        2,
    ]
    syn1 = search(pacs, Level.STUDY, ("PatientID", "SYN1")).datasets[0]
    assert syn1[dicomjson.key(MODALITIES)]["Value"] == ["CT", "SR"]
    assert (first(syn1, STUDY_SERIES), first(syn1, STUDY_INSTANCES)) == (2, 2)


def test_series_level_carries_study_attributes(pacs: DbConnector) -> None:
    assert uids(search(pacs, Level.SERIES), SERIES_UID) == ALL_SERIES
    result = search(pacs, Level.SERIES, ("StudyInstanceUID", SYN["SYN1"].study_iuid))
    assert [first(d, tag_of("Modality")) for d in result.datasets] == ["CT", "SR"]
    assert [first(d, SERIES_INSTANCES) for d in result.datasets] == [1, 1]
    assert {first(d, tag_of("PatientName"))["Alphabetic"] for d in result.datasets} == {
        "Under_Score^A"
    }
    sc = search(pacs, Level.SERIES, ("SeriesInstanceUID", SC.series_iuid)).datasets[0]
    assert first(sc, SERIES_INSTANCES) == 2


def test_image_level_values_from_the_files(pacs: DbConnector) -> None:
    result = search(pacs, Level.IMAGE, ("SeriesInstanceUID", SC.series_iuid))
    jpeg = F.sample_row("SC_rgb_jpeg_dcmtk.dcm")
    assert uids(result, SOP_UID) == sorted([SC.sop_iuid, jpeg.sop_iuid])
    for name in ("rtdose.dcm", "liver.dcm", "emri_small.dcm", "CT_small.dcm"):
        ds = pydicom.dcmread(F.sample_path(name), stop_before_pixels=True)
        answer = search(pacs, Level.IMAGE, ("SOPInstanceUID", str(ds.SOPInstanceUID))).datasets[0]
        for keyword in ("Rows", "Columns", "BitsAllocated", "SOPClassUID", "SeriesNumber"):
            assert first(answer, tag_of(keyword)) == ds[keyword].value, (name, keyword)
        frames = ds.get("NumberOfFrames")
        assert first(answer, tag_of("NumberOfFrames")) == (int(frames) if frames else None)
        assert first(answer, STUDY_UID) == ds.StudyInstanceUID


def test_limit_offset_pages_in_uid_order(pacs: DbConnector) -> None:
    pages = [search(pacs, Level.STUDY, ("limit", "3"), ("offset", str(o))) for o in (0, 3, 6, 9)]
    assert [uid for page in pages for uid in uids(page)] == ALL_STUDIES
    assert [len(p.datasets) for p in pages] == [3, 3, 3, len(ALL_STUDIES) - 9]
    assert [p.complete for p in pages] == [False, False, False, True]
    images = search(pacs, Level.IMAGE, ("limit", "2"), ("offset", "1"))
    assert uids(images, SOP_UID) == sorted(r.sop_iuid for r in ROWS)[1:3]


# ---- matching (PS3.4 C.2.2.2) ----------------------------------------------------------------


def test_single_value_matching(pacs: DbConnector) -> None:
    assert uids(search(pacs, Level.STUDY, ("PatientID", "1CT1"))) == [CT.study_iuid]
    mr = sorted(r.series_iuid for r in ROWS if r.modality == "MR")
    assert uids(search(pacs, Level.SERIES, ("Modality", "MR")), SERIES_UID) == mr
    emri = F.sample_row("emri_small.dcm")
    assert uids(search(pacs, Level.SERIES, ("SeriesNumber", "301")), SERIES_UID) == [
        emri.series_iuid
    ]


def test_single_value_matching_is_case_sensitive(pacs: DbConnector) -> None:
    assert uids(search(pacs, Level.STUDY, ("PatientName", "under_score^a"))) == [
        SYN["SYN3"].study_iuid
    ]
    assert search(pacs, Level.STUDY, ("PatientName", "UNDER_SCORE^A")).datasets == []
    assert search(pacs, Level.SERIES, ("Modality", "mr")).datasets == []


def test_fuzzy_person_name_matching_ignores_case(pacs: DbConnector) -> None:
    assert pacs.capabilities.fuzzy
    expected = sorted([SYN["SYN1"].study_iuid, SYN["SYN3"].study_iuid])
    for value in ("UNDER_SCORE^A", "UNDER_SCORE*"):
        found = search(pacs, Level.STUDY, ("PatientName", value), ("fuzzymatching", "true"))
        assert uids(found) == expected and not found.unmatched


@pytest.mark.parametrize(
    ("key", "value", "patients"),
    [
        ("PatientName", "Under_Score*", ["SYN1"]),  # `_` is no LIKE wildcard
        ("PatientName", "?nder?Score*", ["SYN1", "SYN2"]),  # `?` is one character
        ("StudyDescription", "100%*", ["SYN1"]),  # `%` is no LIKE wildcard
        ("StudyDescription", "C:\\x*", ["SYN3"]),  # the escape character itself
        ("AccessionNumber", "ACC_*", ["SYN1"]),  # a wildcard on an identifier: subquery
    ],
)
def test_wildcard_matching_escapes_like_characters(
    pacs: DbConnector, key: str, value: str, patients: list[str]
) -> None:
    expected = sorted(SYN[p].study_iuid for p in patients)
    assert uids(search(pacs, Level.STUDY, (key, value))) == expected


def test_lone_star_is_universal(pacs: DbConnector) -> None:
    assert uids(search(pacs, Level.STUDY, ("PatientName", "*"))) == ALL_STUDIES


@pytest.mark.parametrize(
    ("value", "low", "high"),
    [
        ("20210301-20210315", dt.date(2021, 3, 1), dt.date(2021, 3, 15)),  # 23:59:59.5 is in
        ("20210315", dt.date(2021, 3, 15), dt.date(2021, 3, 15)),
        ("20210316-", dt.date(2021, 3, 16), dt.date.max),
        ("-20030805", dt.date.min, dt.date(2003, 8, 5)),
    ],
)
def test_date_range_on_a_timestamp(
    pacs: DbConnector, value: str, low: dt.date, high: dt.date
) -> None:
    expected = studies(
        lambda r: r.study_datetime is not None and low <= r.study_datetime.date() <= high
    )
    assert expected and uids(search(pacs, Level.STUDY, ("StudyDate", value))) == expected


def test_date_range_on_a_date_column(pacs: DbConnector) -> None:
    result = search(pacs, Level.STUDY, ("PatientBirthDate", "19600101-"))
    assert uids(result) == studies(
        lambda r: r.pat_birthdate is not None and r.pat_birthdate.year >= 1960
    )
    assert uids(search(pacs, Level.STUDY, ("PatientBirthDate", "19500615"))) == [
        SYN["SYN1"].study_iuid
    ]


def test_date_and_time_ranges_on_text_columns(pacs: DbConnector) -> None:
    dated = search(pacs, Level.SERIES, ("SeriesDate", "19990101-20201231"))
    expected = sorted(
        r.series_iuid for r in ROWS if r.series_date and "19990101" <= r.series_date <= "20201231"
    )
    assert len(expected) == 2 and uids(dated, SERIES_UID) == expected
    for value, low, high in (
        ("1100-1200", "110000", "120059"),
        ("1700-", "170000", "235959"),
        ("-1130", "000000", "113059"),
    ):
        timed = search(pacs, Level.SERIES, ("SeriesTime", value))
        expected = sorted(
            r.series_iuid for r in ROWS if r.series_time and low <= r.series_time <= high
        )
        assert expected and uids(timed, SERIES_UID) == expected, value


@pytest.mark.parametrize(
    ("value", "low", "high"),
    [
        ("1130-1200", dt.time(11, 30), dt.time(12, 0, 59, 999999)),
        ("-1130", dt.time.min, dt.time(11, 30, 59, 999999)),
        ("1700-", dt.time(17), dt.time.max),
    ],
)
def test_time_range_on_a_time_column(
    pacs: DbConnector, value: str, low: dt.time, high: dt.time
) -> None:
    found = search(pacs, Level.IMAGE, ("ContentTime", value))
    expected = sorted(r.sop_iuid for r in ROWS if r.content_time and low <= r.content_time <= high)
    assert expected and uids(found, SOP_UID) == expected and not found.unmatched


@pytest.mark.parametrize(
    ("value", "low", "high"),
    [
        ("2021", dt.datetime(2021, 1, 1), dt.datetime(2021, 12, 31, 23, 59, 59, 999999)),
        ("-201208201208", dt.datetime.min, dt.datetime(2012, 8, 20, 12, 8, 59, 999999)),
        ("202103151200-", dt.datetime(2021, 3, 15, 12), dt.datetime.max),
        ("20210301100000+0100", dt.datetime(2021, 3, 1, 10), dt.datetime(2021, 3, 1, 10)),
    ],
)
def test_date_time_range_on_a_timestamp_column(
    pacs: DbConnector, value: str, low: dt.datetime, high: dt.datetime
) -> None:
    found = search(pacs, Level.IMAGE, ("AcquisitionDateTime", value))
    expected = sorted(r.sop_iuid for r in ROWS if r.acquired_at and low <= r.acquired_at <= high)
    assert expected and uids(found, SOP_UID) == expected and not found.unmatched


def test_list_matching(pacs: DbConnector) -> None:
    found = search(pacs, Level.SERIES, ("Modality", "SR,OT"))
    assert uids(found, SERIES_UID) == sorted(
        {r.series_iuid for r in ROWS if r.modality in ("SR", "OT")}
    )
    pair = sorted([CT.study_iuid, SC.study_iuid])
    assert uids(search(pacs, Level.STUDY, ("StudyInstanceUID", ",".join(pair)))) == pair
    sops = sorted([CT.sop_iuid, SC.sop_iuid])
    assert uids(search(pacs, Level.IMAGE, ("SOPInstanceUID", "\\".join(sops))), SOP_UID) == sops


def test_modalities_in_study_matches_any_series(pacs: DbConnector) -> None:
    found = search(pacs, Level.STUDY, ("ModalitiesInStudy", "SR")).datasets
    assert [first(d, STUDY_UID) for d in found] == [SYN["SYN1"].study_iuid]
    assert found[0][dicomjson.key(MODALITIES)]["Value"] == ["CT", "SR"]
    assert uids(search(pacs, Level.STUDY, ("ModalitiesInStudy", "OT"))) == [SC.study_iuid]


def test_path_and_query_disagreeing_match_nothing(pacs: DbConnector) -> None:
    query = parse_search(
        Level.SERIES, [("StudyInstanceUID", CT.study_iuid)], {STUDY_UID: SC.study_iuid}
    )
    assert pacs.search(query).datasets == []


@pytest.mark.parametrize(
    ("pairs", "tag"),
    [
        ((("StudyTime", "1000-1100"),), "StudyTime"),  # a time of day on a timestamp
        ((("InstitutionName", "X*"),), "InstitutionName"),  # no column at all
    ],
)
def test_unmatched_keys_are_reported_and_paging_left_to_the_engine(
    pacs: DbConnector, pairs: tuple[tuple[str, str], ...], tag: str
) -> None:
    result = search(pacs, Level.STUDY, *pairs, ("limit", "2"), ("offset", "1"))
    assert result.unmatched == frozenset({tag_of(tag)})
    assert uids(result) == ALL_STUDIES and result.complete


def test_identifier_values_are_bound_never_in_the_sql(pacs: DbConnector) -> None:
    hostile = "x' OR '1'='1"
    for key in ("PatientID", "AccessionNumber", "StudyDescription"):
        assert search(pacs, Level.STUDY, (key, hostile)).datasets == []
    columns = pacs._described()
    query = parse_search(Level.STUDY, [("PatientID", hostile)])
    filters = db_sql.build_filters(query, columns, pacs._select, pacs._id_columns, pacs._dialect)
    stmt = db_sql.grouped_statement(
        filters.source, "study_instance_uid", ["patient_id"], filters.where
    )
    compiled = stmt.compile(dialect=pacs._engine.dialect)
    assert hostile not in str(compiled) and hostile in compiled.params.values()
    if pacs._id_columns:
        assert " AND pa.pat_id IN (" in str(compiled)


def test_labels_are_learnt_once_under_concurrency(
    database: F.Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    probes: list[str] = []
    real_describe = db_sql.describe

    def counting(conn: sa.Connection, select: str, label: str | None) -> db_sql.Columns:
        probes.append(select)
        return real_describe(conn, select, label)

    monkeypatch.setattr(db_sql, "describe", counting)
    connector = DbConnector(settings(database))
    answers: list[int] = []
    threads = [
        threading.Thread(
            target=lambda: answers.append(len(search(connector, Level.STUDY).datasets))
        )
        for _ in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    connector.close()
    assert len(probes) == 1 and answers == [len(ALL_STUDIES)] * 4


# ---- retrieval ------------------------------------------------------------------------------


def test_retrieve_streams_the_stored_files(pacs: DbConnector) -> None:
    parts = list(pacs.retrieve_instances(ResourceRef(SC.study_iuid, SC.series_iuid), "*"))
    names = {
        SC.sop_iuid: "SC_rgb_rle.dcm",
        F.sample_row("SC_rgb_jpeg_dcmtk.dcm").sop_iuid: "SC_rgb_jpeg_dcmtk.dcm",
    }
    assert [p.sop_instance_uid for p in parts] == sorted(names)
    for part in parts:
        path = F.sample_path(names[part.sop_instance_uid])
        assert part.data == path.read_bytes()
        assert part.transfer_syntax == pydicom.dcmread(path).file_meta.TransferSyntaxUID


def test_retrieve_in_the_stored_syntax_or_not_acceptable(pacs: DbConnector) -> None:
    ref = ResourceRef(CT.study_iuid, CT.series_iuid, CT.sop_iuid)
    explicit_le = "1.2.840.10008.1.2.1"  # CT_small.dcm's transfer syntax
    assert [p.transfer_syntax for p in pacs.retrieve_instances(ref, explicit_le)] == [explicit_le]
    with pytest.raises(NotAcceptable):
        pacs.retrieve_instances(ref, "1.2.840.10008.1.2.4.50")


def test_retrieve_nothing_is_not_found(pacs: DbConnector) -> None:
    with pytest.raises(NotFound):
        pacs.retrieve_instances(ResourceRef("1.2.3.4"), "*")
    with pytest.raises(NotFound):
        pacs.retrieve_metadata(ResourceRef(CT.study_iuid, CT.series_iuid, "1.2.3.4"), BULK_BASE)


def test_missing_file_and_path_outside_the_root_are_refused(pacs: DbConnector) -> None:
    missing = ResourceRef(SYN["SYN4"].study_iuid)
    with pytest.raises(ConnectorError) as error:
        pacs.retrieve_instances(missing, "*")
    assert (error.value.connector, error.value.message) == (
        "pacs",
        "the stored file of an instance is missing",
    )
    outside = ResourceRef(SYN["SYN5"].study_iuid)
    for attempt in (
        lambda: pacs.retrieve_instances(outside, "*"),
        lambda: pacs.retrieve_metadata(outside, BULK_BASE),
    ):
        with pytest.raises(ConnectorError) as error:
            attempt()
        assert error.value.message == "a stored file path is outside file-path-root"


@pytest.mark.parametrize(
    "name", ["CT_small.dcm", "liver.dcm", "emri_small.dcm", "SC_rgb_jpeg_dcmtk.dcm"]
)
def test_metadata_from_the_file_with_bulk_data_uris(
    pacs: DbConnector, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def never(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a value left unread by defer_size was read")

    monkeypatch.setattr(pydicom.filereader, "read_deferred_data_element", never)
    row = F.sample_row(name)
    [meta] = pacs.retrieve_metadata(
        ResourceRef(row.study_iuid, row.series_iuid, row.sop_iuid), BULK_BASE
    )
    monkeypatch.undo()
    ds = pydicom.dcmread(F.sample_path(name))
    pixel = meta["7FE00010"]
    instance = f"studies/{row.study_iuid}/series/{row.series_iuid}/instances/{row.sop_iuid}"
    assert pixel == {
        "vr": ds["PixelData"].VR,
        "BulkDataURI": f"{BULK_BASE}/{instance}/bulk/7FE00010",
    }
    assert first(meta, SOP_UID) == ds.SOPInstanceUID
    assert first(meta, tag_of("Rows")) == ds.Rows
    assert set(meta) == {k for k in dicomjson.from_pydicom(ds, bulk=lambda p: "x")}


def test_retrieval_without_file_path_column_nor_wado(database: F.Database) -> None:
    base = settings(database, file_path_column="no_such_label")
    connector = DbConnector(base)
    try:
        for attempt in (
            lambda: connector.retrieve_instances(ResourceRef(CT.study_iuid), "*"),
            lambda: connector.retrieve_metadata(ResourceRef(CT.study_iuid), BULK_BASE),
        ):
            with pytest.raises(ConnectorError) as error:
                attempt()
            assert (error.value.connector, error.value.message) == (
                "pacs",
                "no file-path column and no wado section",
            )
    finally:
        connector.close()


def test_retrieval_through_an_unreachable_wado_endpoint(database: F.Database) -> None:
    """Without a file-path column the wado section is used: the database is asked first
    (NotFound before any request), then the endpoint, which refuses the connection."""
    wado = Authentication("NONE", server=Server(f"http://127.0.0.1:{free_port()}"))
    base = settings(database)
    assert base.db is not None
    query = DbQuery(select=F.SELECT)  # `stored_file` is not the default `file_path` label
    db_settings = DbSettings(uri=base.db.uri, query=query, wado=wado)
    connector = DbConnector(ConnectorSettings(id="pacs", type="DB", db=db_settings))
    try:
        with pytest.raises(NotFound):
            connector.retrieve_instances(ResourceRef("1.2.3.4"), "*")
        stream = connector.retrieve_instances(ResourceRef(CT.study_iuid), "*")
        with pytest.raises(ConnectorError) as error:
            next(stream)
    finally:
        connector.close()
    assert (error.value.connector, error.value.message) == (
        "pacs",
        "WADO-URI retrieve failed: connection failed or lost",
    )


# ---- configuration, readiness, failures -----------------------------------------------------


def test_jdbc_url_and_driver_class_connect(database: F.Database) -> None:
    name = database.name
    jdbc = {
        "sqlite": (
            f"jdbc:sqlite:{database.uri.removeprefix('sqlite:///')}",
            "org.sqlite.JDBC",
            None,
        ),
        "postgresql": (
            f"jdbc:postgresql://127.0.0.1:5432/{name}?ApplicationName=gw",
            "org.postgresql.Driver",
            "postgres",
        ),
        "mariadb": (f"jdbc:mariadb://127.0.0.1:3306/{name}", "org.mariadb.jdbc.Driver", "root"),
    }[database.backend]
    base = settings(database)
    assert base.db is not None
    db_settings = DbSettings(uri=jdbc[0], driver=jdbc[1], user=jdbc[2], query=base.db.query)
    connector = DbConnector(ConnectorSettings(id="pacs", type="DB", db=db_settings))
    try:
        connector.check()
        assert uids(search(connector, Level.STUDY, ("PatientID", "1CT1"))) == [CT.study_iuid]
    finally:
        connector.close()


@pytest.mark.parametrize("scheme", ["postgresql+psycopg", "mysql+pymysql"])
def test_dead_database_is_a_connector_error(scheme: str) -> None:
    uri = f"{scheme}://gwuser:s3cret-pw@127.0.0.1:{free_port()}/pacs"
    db_settings = DbSettings(uri=uri, query=DbQuery(select=F.SELECT))
    connector = DbConnector(
        ConnectorSettings(id="deadpacs", type="DB", db=db_settings, timeouts=Timeouts(connect=2))
    )
    for call in (connector.check, lambda: search(connector, Level.STUDY, ("PatientID", "P1"))):
        with pytest.raises(ConnectorError) as error:
            call()
        assert error.value.connector == "deadpacs"
        assert "s3cret" not in error.value.message and "P1" not in error.value.message
    connector.close()


def test_missing_database_driver_is_a_connector_error() -> None:
    uri = "postgresql+nosuchdbapi://h/pacs"
    db_settings = DbSettings(uri=uri, query=DbQuery(select=F.SELECT))
    with pytest.raises(ConnectorError) as error:
        DbConnector(ConnectorSettings(id="pacs", type="DB", db=db_settings))
    assert error.value.connector == "pacs" and "nosuchdbapi" in error.value.message


def test_sql_failure_names_only_the_error_class(database: F.Database) -> None:
    broken = DbQuery(select="SELECT secret_col AS patient_id FROM no_such_table WHERE 1 = 1")
    db_settings = DbSettings(uri=database.uri, query=broken)
    connector = DbConnector(ConnectorSettings(id="pacs", type="DB", db=db_settings))
    with pytest.raises(ConnectorError) as error:
        search(connector, Level.STUDY)
    connector.close()
    expected = "OperationalError" if database.backend == "sqlite" else "ProgrammingError"
    assert error.value.message == f"database query failed: {expected}"
    assert "no_such_table" not in error.value.message and "secret" not in error.value.message


JDBC_CASES = [
    (
        "jdbc:postgresql://db.example:5433/pacs?sslmode=require&foo=1",
        None,
        "postgresql+psycopg://u:p@db.example:5433/pacs?sslmode=require",
    ),
    ("jdbc:postgresql:pacs", "org.postgresql.Driver", "postgresql+psycopg://u:p@localhost/pacs"),
    (
        "jdbc:postgresql://h/pacs?ssl=true&currentSchema=arc",
        "psycopg2",
        "postgresql+psycopg2://u:p@h/pacs?options=-csearch_path%3Darc&sslmode=verify-full",
    ),
    (
        "jdbc:mysql://h:3306/pacs?useSSL=true&serverTimezone=UTC",
        "com.mysql.cj.jdbc.Driver",
        "mysql+pymysql://u:p@h:3306/pacs?charset=utf8mb4&ssl_check_hostname=false",
    ),
    ("jdbc:mysql://h/pacs", "com.mysql.jdbc.Driver", "mysql+pymysql://u:p@h/pacs?charset=utf8mb4"),
    (
        "jdbc:mariadb://h:3307/pacs",
        "org.mariadb.jdbc.Driver",
        "mariadb+pymysql://u:p@h:3307/pacs?charset=utf8mb4",
    ),
    (
        "jdbc:sqlserver://sql1:1433;databaseName=pacs;encrypt=true;trustServerCertificate=true",
        "com.microsoft.sqlserver.jdbc.SQLServerDriver",
        (
            "mssql+pyodbc://u:p@sql1:1433/pacs?Encrypt=yes&TrustServerCertificate=yes"
            "&driver=ODBC+Driver+18+for+SQL+Server"
        ),
    ),
    (
        "jdbc:sqlserver://sql1\\inst;database=pacs",
        None,
        "mssql+pyodbc://u:p@sql1\\inst/pacs?driver=ODBC+Driver+18+for+SQL+Server",
    ),
    (
        "jdbc:oracle:thin:@ora1:1521:ORCL",
        "oracle.jdbc.OracleDriver",
        "oracle+oracledb://u:p@ora1:1521/ORCL",
    ),
    (
        "jdbc:oracle:thin:@//ora1:1522/pacs.svc",
        "oracle.jdbc.driver.OracleDriver",
        "oracle+oracledb://u:p@ora1:1522?service_name=pacs.svc",
    ),
    ("postgresql://h/pacs", None, "postgresql+psycopg://u:p@h/pacs"),
    ("mysql+pymysql://h/pacs", "org.mariadb.jdbc.Driver", "mysql+pymysql://u:p@h/pacs"),
    ("sqlite:////var/pacs.db", None, "sqlite+pysqlite:////var/pacs.db"),
]


@pytest.mark.parametrize(("uri", "driver", "expected"), JDBC_CASES)
def test_url_mapping(uri: str, driver: str | None, expected: str) -> None:
    url = to_sqlalchemy_url(uri, driver, "u", "p")
    assert url.render_as_string(hide_password=False) == expected


def test_url_credentials_are_set_not_concatenated() -> None:
    url = to_sqlalchemy_url("jdbc:postgresql://h/pacs", None, "us@r", "p@ss/:word")
    assert (url.username, url.password, url.host, url.database) == (
        "us@r",
        "p@ss/:word",
        "h",
        "pacs",
    )


@pytest.mark.parametrize(
    ("uri", "driver", "message"),
    [
        ("jdbc:h2:mem:pacs", None, "unsupported JDBC URL (supported: jdbc:postgresql, "),
        ("mongodb://h/pacs", None, "unsupported database in the uri (supported: postgresql, "),
        ("postgresql://u:pw-4711@h:port/pacs", None, "the database uri has an invalid port"),
        ("jdbc:postgresql://h/pacs", "com.mysql.cj.jdbc.Driver", "driver is for mysql, but the uri"),
        ("jdbc:mysql://h/pacs", "org.postgresql.Driver", "driver is for postgresql, but the uri"),
        ("jdbc:postgresql://h/pacs", "com.example.Driver", "unknown JDBC driver class (known: "),
        ("jdbc:postgresql://h/pacs", "mysql+pymysql", "driver is for another database"),
        ("jdbc:postgresql://h/pacs", "psy copg", "invalid driver: a DB-API name"),
        ("jdbc:oracle:thin:@ora1:1521", None, "SID"),
        ("jdbc:mysql:loadbalance://h1,h2/pacs", None, "jdbc:mysql://host"),
        ("jdbc:sqlserver://h;portNumber=x14;databaseName=pacs", None, "invalid port"),
    ],
)
def test_url_mapping_errors(uri: str, driver: str | None, message: str) -> None:
    """The message says what is wrong without repeating the configured text (the configuration
    loader shows it beside the key path)."""
    with pytest.raises(ValueError) as error:
        to_sqlalchemy_url(uri, driver)
    text = str(error.value)
    assert message in text
    for configured in ("h2", "mongodb", "pw-4711", "com.example", "psy copg", "x14"):
        assert configured not in text


@pytest.mark.parametrize(
    ("labels", "tag", "label"),
    [
        (["patient_name"], "PatientName", "patient_name"),
        (["patientName"], "PatientName", "patientName"),
        (["SOP_INSTANCE_UID"], "SOPInstanceUID", "SOP_INSTANCE_UID"),
        (["number_of_frames"], "NumberOfFrames", "number_of_frames"),
        (["study_date_time"], "StudyTime", "study_date_time"),
        (["study_date_time", "study_date"], "StudyDate", "study_date"),
        (["series_date_time"], "SeriesDate", "series_date_time"),
    ],
)
def test_labels_map_to_keywords(labels: list[str], tag: str, label: str) -> None:
    columns = db_sql.map_columns([(lb, "text") for lb in labels], None)
    assert columns.label(tag_of(tag)) == label


def test_file_path_and_unknown_labels() -> None:
    columns = db_sql.map_columns([("file_path", "text"), ("pk", "number")], None)
    assert columns.file_path == "file_path" and dict(columns.sources) == {}
    columns = db_sql.map_columns([("file_path", "text"), ("fs_path", "text")], "fs_path")
    assert columns.file_path == "fs_path"


def test_labels_naming_no_attribute_are_logged_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A misspelt keyword would silently drop its attribute: the start-up log names it."""
    with F.database("sqlite", tmp_path) as db:
        select = F.SELECT.replace("se.modality AS modality", "se.modality AS modalty")
        connector = DbConnector(settings(db, select=select))
        with caplog.at_level(logging.WARNING, logger="gateway.db"):
            search(connector, Level.STUDY)
            search(connector, Level.SERIES)
        connector.close()
    warnings = [r.getMessage() for r in caplog.records if r.name == "gateway.db"]
    assert warnings == [
        "connector pacs: select columns naming no DICOM attribute (ignored): patient_pk, modalty"
    ]


UTC_PLUS_1 = dt.timezone(dt.timedelta(hours=1))


@pytest.mark.parametrize(
    ("value", "vr", "expected"),
    [  # DA YYYYMMDD, TM HHMMSS.FFFFFF, DT YYYYMMDDHHMMSS.FFFFFF&ZZXX (PS3.5 Table 6.2-1)
        (dt.datetime(2004, 1, 19, 7, 27, 30), "DA", "20040119"),
        (dt.datetime(2004, 1, 19, 7, 27, 30), "TM", "072730"),
        (dt.datetime(2004, 1, 19, 7, 27, 30, 500), "TM", "072730.000500"),
        (dt.time(23, 59, 59, 500000), "TM", "235959.500000"),
        ("2004-01-19 07:27:30.000000", "TM", "072730"),
        ("2004-01-19 07:27:30.250000", "TM", "072730.250000"),
        ("07:27:30.5", "TM", "072730.500000"),
        ("2004-01-19", "DA", "20040119"),
        (dt.date(2004, 1, 19), "TM", None),  # a date alone has no time of day
        (dt.timedelta(hours=7, minutes=5), "TM", "070500"),
        (dt.timedelta(hours=7, minutes=5, microseconds=120000), "TM", "070500.120000"),
        (dt.datetime(2004, 1, 19, 7, 27, 30), "DT", "20040119072730"),
        (dt.datetime(2004, 1, 19, 7, 27, 30, 5, UTC_PLUS_1), "DT", "20040119072730.000005+0100"),
        (dt.date(2004, 1, 19), "DT", "20040119"),
        ("  DOE^J  ", "PN", {"Alphabetic": "DOE^J"}),
        ("", "LO", None),
        (b"CT ", "CS", "CT"),
        (15, "IS", 15),
    ],
)
def test_database_values_as_dicom_json(value: Any, vr: str, expected: Any) -> None:
    """A row value through `plain_value` and `dicomjson.attribute`, as search answers are built."""
    attr = dicomjson.attribute(0x00080030, plain_value(value, vr), vr)
    assert attr.get("Value", [None])[0] == expected


@pytest.mark.parametrize(
    ("value", "like", "glob"),
    [
        ("A*", "A%", "A*"),
        ("a_b?", "a\\_b_", "a_b?"),
        ("100%*", "100\\%%", "100%*"),
        ("C:\\x*", "C:\\\\x%", "C:\\x*"),
        ("[x]*", "[x]%", "[[]x]*"),
    ],
)
def test_wildcard_patterns(value: str, like: str, glob: str) -> None:
    assert (db_match.like_pattern(value), db_match.glob_pattern(value)) == (like, glob)


def test_no_connection_at_construction() -> None:
    uri = f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/none"
    connector = DbConnector(
        ConnectorSettings(
            id="lazy", type="DB", db=DbSettings(uri=uri, query=DbQuery(select=F.SELECT))
        )
    )
    assert connector._columns is None  # nothing learnt: nothing was asked
    with pytest.raises(ConnectorError):  # the database was never there
        connector.check()
    connector.close()


def test_one_engine_per_connector_whatever_the_requests(
    database: F.Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the connector builds its SQLAlchemy engine once; concurrent searches borrow connections
    # from that engine's pool instead of opening one per request
    engines: list[sa.Engine] = []
    real = sa.create_engine

    def counting(*args: Any, **kwargs: Any) -> sa.Engine:
        engines.append(real(*args, **kwargs))
        return engines[-1]

    monkeypatch.setattr(sa, "create_engine", counting)
    connector = DbConnector(settings(database))
    opened: list[object] = []
    sa.event.listen(engines[0], "connect", lambda conn, record: opened.append(conn))
    answers: list[list[str]] = []

    def worker() -> None:
        for _ in range(5):
            answers.append(uids(search(connector, Level.STUDY)))

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    connector.close()
    assert answers == [ALL_STUDIES] * 30
    assert len(engines) == 1
    assert 1 <= len(opened) <= 6  # at most one connection per thread at a time, then reused
