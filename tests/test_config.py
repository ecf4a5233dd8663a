"""gateway.config: loading Viewer-Hub style files unchanged, error messages that name the key path
(and never a secret), `${VAR}` substitution, `{base64}` secrets, `connector.default`, timeouts.

Expected values come from the fixture files themselves, from the standard (PS3.5 6.2 AE titles,
PS3.6 tag numbers) and from the stdlib's base64, never from the code under test.
"""

from __future__ import annotations

import base64
import copy
import logging
import re
from pathlib import Path
from typing import Any

import pytest
from marshmallow import Schema
from marshmallow import fields as mfields

from gateway.config import ConfigError, load_settings, load_settings_from_dict
from gateway.config.fields import NamedMap
from gateway.config.schemas import TopSchema
from gateway.settings import (
    Authentication,
    BasicAuth,
    ConnectorSettings,
    DbConnector,
    DbQuery,
    DicomConnector,
    DicomWebConnector,
    Dimse,
    KeyStore,
    OAuth2Auth,
    OidcClient,
    Server,
    Settings,
    StorageScpOptions,
    Timeouts,
    Tls,
    TrustStore,
    WeasisManifest,
)

DATA = Path(__file__).parent / "data" / "config"
EXAMPLE = Path(__file__).resolve().parents[1] / "config" / "gateway.example.yml"

# Distinctive secret values: no error message may ever contain one of them.
SECRETS = {
    "DB_PW": "Db-Secret-4711",
    "BASIC_PW": "Basic-Secret-0815",
    "OIDC_SECRET": "Oidc-Secret-1234",
}
DELETE = object()


def base() -> dict[str, Any]:
    """A valid configuration with one connector of each type (secrets from SECRETS)."""
    def basic() -> dict[str, Any]:
        return {"login": "gw", "password": "${BASIC_PW}",
                "server": {"url": "http://127.0.0.1", "port": 8042, "context": "/dicom-web"}}

    oauth2 = {"oidc-id": "keycloak", "server": {"url": "http://127.0.0.1:8080"}}
    return {
        "oidc": {"keycloak": {"client-id": "gateway", "client-secret": "${OIDC_SECRET}",
                              "token-url": "http://127.0.0.1:8085/token"}},
        "connector": {"config": {
            "db": {"type": "DB", "db-connector": {
                "user": "pacs", "password": "${DB_PW}", "uri": "sqlite://",
                "query": {"select": "select * from t where 1=1", "patient-id-column": "pid"}}},
            "dimse": {"type": "DICOM", "dicom-connector": {
                "dimse": {"calling-aet": "GATEWAY", "aet": "PACS", "host": "127.0.0.1",
                          "port": 11112},
                "wado": {"authentication": {"type": "BASIC", "basic": basic()}}}},
            "web": {"type": "DICOM_WEB", "dicom-web-connector": {
                "qido-rs": {"authentication": {"type": "OAUTH2", "oauth2": oauth2,
                                               "basic": basic()}}}},
        }},
    }


def change(data: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """Set (or, with DELETE, remove) the dotted key `path` in `data`; returns `data`."""
    *parents, last = path.split(".")
    node = data
    for key in parents:
        node = node.setdefault(key, {})
    if value is DELETE:
        del node[last]
    else:
        node[last] = value
    return data


def load(data: dict[str, Any], **env: str) -> Settings:
    return load_settings_from_dict(data, {**SECRETS, **env})


def errors_of(data: dict[str, Any], **env: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load(data, **env)
    message = str(caught.value)
    for secret in SECRETS.values():
        assert secret not in message
    assert message.splitlines() == [f"{p}: {m}" if p else m for p, m in caught.value.errors]
    return message.splitlines()


# ---------------------------------------------------------------------------------------------
# A Viewer-Hub file loads unchanged

WADO_CONTEXT = "/dcm4chee-arc/aets/DCM4CHEE/wado"


def _server(port: int, context: str) -> Server:
    return Server(url="http://localhost", port=port, context=context)


def _both(kind: str, login: str, password: str, basic_server: Server,
          oauth2_server: Server) -> Authentication:
    return Authentication(
        type=kind,  # type: ignore[arg-type]
        basic=BasicAuth(login=login, password=password, server=basic_server),
        oauth2=OAuth2Auth(oidc_id="keycloak", server=oauth2_server),
    )


def test_viewer_hub_file_loads_unchanged() -> None:
    settings = load_settings(DATA / "viewer-hub.yml", {"VH_OIDC_SECRET": "vh-secret"})
    assert [c.id for c in settings.connectors] == ["pacs-db", "dcm4chee-dimse", "orthanc-web"]
    assert settings.default == ("dcm4chee-dimse", "orthanc-web")
    assert settings.dicom_web_level_limit == "SERIE"
    assert settings.oidc == (OidcClient(
        id="keycloak", client_id="viewer-hub", client_secret="vh-secret",
        token_url="http://localhost:8085/realms/viewer-hub/protocol/openid-connect/token",
        scope="openid profile", grant_type="client_credentials"),)
    wado = _server(8080, WADO_CONTEXT)
    assert settings.connector("pacs-db") == ConnectorSettings(
        id="pacs-db", type="DB",
        deactivated=frozenset({"PATIENT_ID", "SOP_INSTANCE_UID"}),
        weasis=WeasisManifest(
            transfer_syntax_uid="1.2.840.10008.1.2.4.90", compression_rate=80,
            require_only_sop_instance_uid=True, additionnal_parameters="&transferSyntax=*",
            override_dicom_tags=("0x00100020", "0x00100010"),
            http_tags=(("X-Site", "radiology"),)),
        db=DbConnector(
            user="pacs", password="pacs-db-pw",
            uri="jdbc:postgresql://localhost:5432/pacsdb", driver="org.postgresql.Driver",
            query=DbQuery(
                select=(
                    "select pa.pat_name as patient_name, pa.pat_id as patient_id, "
                    "st.study_iuid as study_instance_uid, se.series_iuid as series_instance_uid, "
                    "i.sop_iuid as sop_instance_uid from patient pa, study st, series se, "
                    "instance i where i.series_fk = se.pk and se.study_fk = st.pk and "
                    "st.patient_fk = pa.pk"),
                accession_number_column="st.accession_no", patient_id_column="pa.pat_id",
                study_instance_uid_column="st.study_iuid",
                serie_instance_uid_column="se.series_iuid",
                sop_instance_uid_column="i.sop_iuid"),
            wado=_both("BASIC", "wado-user", "wado-pw", wado, wado)),
        timeouts=Timeouts(),
    )
    assert settings.connector("dcm4chee-dimse") == ConnectorSettings(
        id="dcm4chee-dimse", type="DICOM",
        weasis=WeasisManifest(transfer_syntax_uid="*"),
        dicom=DicomConnector(
            dimse=Dimse(
                calling_aet="VIEWER-HUB", aet="DCM4CHEE", host="localhost", port=11112,
                tls=Tls(mode=True, need_client_authentication=True),
                key_store=KeyStore(url="/etc/viewer-hub/tls/client.pem", type="PEM",
                                   password="store-pw", key_store_password="key-pw"),
                trust_store=TrustStore(url="/etc/viewer-hub/tls/ca.pem", type="PEM",
                                       password="trust-pw")),
            wado=_both("OAUTH2", "toChange", "toChange", wado, wado)),
    )
    orthanc = _server(8042, "/dicomweb")
    gateway_route = _server(8088, "/ORTHANC-LOCAL/dicomweb")
    assert settings.connector("orthanc-web") == ConnectorSettings(
        id="orthanc-web", type="DICOM_WEB",
        deactivated=frozenset({"SERIE_INSTANCE_UID"}),
        weasis=WeasisManifest(transfer_syntax_uid="*", compression_rate=0),
        dicom_web=DicomWebConnector(
            qido_rs=_both("OAUTH2", "orthanc-user", "password", orthanc, gateway_route),
            wado_rs=_both("BASIC", "orthanc-user", "password", orthanc, gateway_route)),
    )
    assert settings.connector("orthanc-web").dicom_web.qido_rs.base_url == (  # type: ignore[union-attr]
        "http://localhost:8088/ORTHANC-LOCAL/dicomweb")


def test_basic_block_needs_no_oauth2_sub_block() -> None:
    """Viewer-Hub defect (o): a BASIC block must load without any `oauth2` sub-block."""
    settings = load(base())
    auth = settings.connector("dimse").dicom.wado  # type: ignore[union-attr]
    assert auth == Authentication(type="BASIC", basic=BasicAuth(
        login="gw", password=SECRETS["BASIC_PW"],
        server=Server(url="http://127.0.0.1", port=8042, context="/dicom-web")))


def test_unused_incomplete_sub_block_is_ignored() -> None:
    data = base()
    auth = "connector.config.web.dicom-web-connector.qido-rs.authentication"
    change(data, auth + ".basic", {"login": "", "password": None, "server": {"url": None}})
    loaded = load(data).connector("web").dicom_web.qido_rs  # type: ignore[union-attr]
    assert loaded.basic is None
    assert loaded.oauth2 == OAuth2Auth(oidc_id="keycloak",
                                       server=Server(url="http://127.0.0.1:8080"))


def test_unused_oauth2_with_unknown_oidc_id_is_ignored() -> None:
    """Viewer-Hub files fill `oauth2` even for BASIC; its registration may live elsewhere."""
    data = change(base(), f"{WADO_AUTH}.oauth2", {
        "oidc-id": "spring-only", "server": {"url": "http://127.0.0.1"}})
    auth = load(data).connector("dimse").dicom.wado  # type: ignore[union-attr]
    assert auth is not None and auth.type == "BASIC" and auth.oauth2 is None


def test_unknown_key_with_empty_value_is_rejected() -> None:
    data = change(base(), "connector.limit", None)
    change(data, f"{DIMSE}.tls", {"mode": None, "verify": ""})
    assert sorted(errors_of(data)) == [
        f"{DIMSE}.tls.verify: Unknown key.", "connector.limit: Unknown key."]


def test_wado_rs_defaults_to_qido_rs() -> None:
    web = load(base()).connector("web").dicom_web
    assert web is not None and web.wado_rs == web.qido_rs and web.page_size == 1000


def test_none_authentication_uses_top_level_server() -> None:
    data = change(base(), "connector.config.db.db-connector.wado", {"authentication": {
        "type": "NONE", "server": {"url": "http://127.0.0.1", "port": 8080, "context": "wado"}}})
    auth = load(data).connector("db").db.wado  # type: ignore[union-attr]
    assert auth is not None and auth.base_url == "http://127.0.0.1:8080/wado"


@pytest.mark.parametrize(("protocol", "expected"), [
    (None, "WADO-URI"), ("WADO-URI", "WADO-URI"), ("wado-rs", "WADO-RS")])
def test_db_wado_protocol(protocol: str | None, expected: str) -> None:
    wado: dict[str, Any] = {"authentication": NONE_AUTH}
    if protocol is not None:
        wado["protocol"] = protocol
    db = load(change(base(), f"{DB}.wado", wado)).connector("db").db
    assert db is not None and db.wado_protocol == expected
    assert db.wado == Authentication(type="NONE", server=Server(
        url="http://127.0.0.1:8042", context="/wado"))


@pytest.mark.parametrize(("uri", "driver"), [
    ("jdbc:postgresql://db.example:5432/pacs", "org.postgresql.Driver"),
    ("jdbc:mariadb://db.example/pacs", "org.mariadb.jdbc.Driver"),
    ("jdbc:mysql://db.example/pacs", "org.mariadb.jdbc.Driver"),  # one family
    ("postgresql+psycopg://db.example/pacs", "psycopg2"),
    ("jdbc:oracle:thin:@//ora1:1521/pacs", None),
])
def test_database_uri_and_driver_accepted(uri: str, driver: str | None) -> None:
    data = change(change(base(), f"{DB}.uri", uri), f"{DB}.driver", driver)
    db = load(data).connector("db").db
    assert db is not None and (db.uri, db.driver) == (uri, driver)


def test_example_config_loads() -> None:
    env = {"DB_PASSWORD": "db-pw", "PACS_WEB_PASSWORD": "web-pw", "OIDC_CLIENT_SECRET": "cs"}
    settings = load_settings(EXAMPLE, env)
    assert [(c.id, c.type) for c in settings.connectors] == [
        ("pacs-db", "DB"), ("pacs-dimse", "DICOM"), ("pacs-web", "DICOM_WEB"),
        ("cloud-web", "DICOM_WEB")]
    assert settings.default == ("pacs-dimse", "pacs-db")
    assert settings.gateway.public_url == "https://gw.example.org/dicomweb-gateway"
    db = settings.connector("pacs-db").db
    assert db is not None and db.password == "db-pw"
    assert db.query.file_path_column == "file_path" and db.wado_protocol == "WADO-URI"
    dimse = settings.connector("pacs-dimse").dicom
    assert dimse is not None and dimse.wado is not None and dimse.wado.basic is not None
    assert dimse.wado.basic.password == "change-me"  # '{base64}Y2hhbmdlLW1l'
    assert dimse.dimse.host == "127.0.0.1"  # ${PACS_HOST:-127.0.0.1}
    cloud = settings.connector("cloud-web")
    assert cloud.dicom_web is not None and cloud.dicom_web.qido_rs.type == "OAUTH2"
    assert cloud.timeouts == Timeouts(connect=10, request=120)
    assert settings.oidc_client("keycloak").client_secret == "cs"


def _key_paths(schema: type[Schema], prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every leaf key the loader accepts, as a path (`<id>` for the ids of a named map)."""
    paths: list[tuple[str, ...]] = []
    for name, field in schema().fields.items():
        path = (*prefix, field.data_key or name)
        if isinstance(field, mfields.Nested):
            paths += _key_paths(type(field.schema), path)
        elif isinstance(field, NamedMap):
            paths += _key_paths(field.schema_class, (*path, "<id>"))
        else:
            paths.append(path)
    return paths


def test_example_config_documents_every_key() -> None:
    # each key the loader accepts appears in the example as a key line (set, or commented out
    # for the optional ones), with a comment on that line or a comment line just above it
    lines = EXAMPLE.read_text().splitlines()
    paths = _key_paths(TopSchema)
    assert len(paths) >= 100  # the walk found the schema (a broken walk must not pass)
    assert ("connector", "config", "<id>", "db-connector", "query", "select") in paths

    def documented(i: int) -> bool:
        line = lines[i].lstrip().removeprefix("#")
        above = lines[i - 1].strip() if i else ""
        return "#" in line or (above.startswith("#") and not re.match(r"#\s*[\w-]+:", above))

    for path in paths:
        key_line = re.compile(r"\s*(#\s*)?" + re.escape(path[-1]) + ":")
        found = [i for i, line in enumerate(lines) if key_line.match(line)]
        assert found, f"{'.'.join(path)} is not in the example"
        assert any(documented(i) for i in found), f"{'.'.join(path)} has no comment"


# ---------------------------------------------------------------------------------------------
# Errors name the key path exactly

C = "connector.config"
DB = f"{C}.db.db-connector"
NONE_AUTH = {"type": "NONE", "server": {"url": "http://127.0.0.1:8042", "context": "/wado"}}
DIMSE = f"{C}.dimse.dicom-connector.dimse"
QIDO_AUTH = f"{C}.web.dicom-web-connector.qido-rs.authentication"
WADO_AUTH = f"{C}.dimse.dicom-connector.wado.authentication"
MISSING = "Missing data for required field."
AE = "Not a valid AE title: 1 to 16 characters, no backslash or control characters (PS3.5 6.2)."
PORT_RANGE = "Must be greater than or equal to 1 and less than or equal to 65535."

ERROR_CASES: list[tuple[str, list[tuple[str, Any]], str]] = [
    ("port not an integer", [(f"{DIMSE}.port", "eleven")],
     f"{DIMSE}.port: Not a valid integer."),
    ("port with a fraction", [(f"{DIMSE}.port", 104.5)], f"{DIMSE}.port: Not a valid integer."),
    ("port zero", [(f"{DIMSE}.port", 0)], f"{DIMSE}.port: {PORT_RANGE}"),
    ("port too big", [(f"{DIMSE}.port", 65536)], f"{DIMSE}.port: {PORT_RANGE}"),
    ("port missing", [(f"{DIMSE}.port", DELETE)], f"{DIMSE}.port: {MISSING}"),
    ("unknown top-level key", [("server", {"port": 8080})], "server: Unknown key."),
    ("unknown gateway key", [("gateway.public_url", "http://x")],
     "gateway.public_url: Unknown key."),
    ("unknown connector key", [(f"{C}.db.wado", {})], f"{C}.db.wado: Unknown key."),
    ("unknown dimse key", [(f"{DIMSE}.called-aet", "X")], f"{DIMSE}.called-aet: Unknown key."),
    ("unknown server key", [(f"{WADO_AUTH}.basic.server.path", "/x")],
     f"{WADO_AUTH}.basic.server.path: Unknown key."),
    ("unknown timeout", [("gateway.timeouts.write", 3)], "gateway.timeouts.write: Unknown key."),
    ("missing select", [(f"{C}.db.db-connector.query.select", DELETE)],
     f"{C}.db.db-connector.query.select: {MISSING}"),
    ("missing uri", [(f"{C}.db.db-connector.uri", "")], f"{C}.db.db-connector.uri: {MISSING}"),
    ("bad column", [(f"{C}.db.db-connector.query.patient-id-column", "pid; drop table t")],
     (f"{C}.db.db-connector.query.patient-id-column: "
     "Not a column name (identifier, optionally table-qualified).")),
    ("BASIC without login", [(f"{WADO_AUTH}.basic.login", DELETE)],
     f"{WADO_AUTH}.basic.login: {MISSING}"),
    ("BASIC without server url", [(f"{WADO_AUTH}.basic.server", {"port": 80})],
     f"{WADO_AUTH}.basic.server.url: {MISSING}"),
    ("OAUTH2 unknown oidc-id", [(f"{QIDO_AUTH}.oauth2.oidc-id", "okta")],
     f"{QIDO_AUTH}.oauth2.oidc-id: No such client registration in `oidc` (known: keycloak)."),
    ("OAUTH2 without oidc-id", [(f"{QIDO_AUTH}.oauth2.oidc-id", None)],
     f"{QIDO_AUTH}.oauth2.oidc-id: {MISSING}"),
    ("NONE without server", [(f"{QIDO_AUTH}.type", "NONE")], f"{QIDO_AUTH}.server.url: {MISSING}"),
    ("unknown auth type", [(f"{QIDO_AUTH}.type", "DIGEST")],
     f"{QIDO_AUTH}.type: Must be one of: BASIC, OAUTH2, NONE."),
    ("unknown connector type", [(f"{C}.db.type", "FHIR")],
     f"{C}.db.type: Must be one of: DB, DICOM, DICOM_WEB."),
    ("wrong type block", [(f"{C}.db.dicom-connector", {"dimse": {}})],
     f"{C}.db.dicom-connector: Not allowed for a connector of type DB (it takes db-connector)."),
    ("block of its type missing",
     [(f"{C}.web.type", "DICOM"), (f"{C}.web.dicom-web-connector", DELETE)],
     f"{C}.web.dicom-connector: Missing data for required field (type DICOM)."),
    ("JKS keystore", [(f"{DIMSE}.keyStore", {"url": "store.jks", "type": "JKS"})],
     (f"{DIMSE}.keyStore.type: Only PEM is supported: convert the store to a PEM file "
     "(for example `openssl pkcs12 -in store.p12 -out store.pem`).")),
    ("PKCS12 truststore", [(f"{DIMSE}.truststore", {"url": "ca.p12", "type": "PKCS12"})],
     (f"{DIMSE}.truststore.type: Only PEM is supported: convert the store to a PEM file "
     "(for example `openssl pkcs12 -in store.p12 -out store.pem`).")),
    ("client auth without keyStore",
     [(f"{DIMSE}.tls", {"mode": True, "need-client-authentication": True})],
     (f"{DIMSE}.keyStore: Missing data for required field "
     "(tls.need-client-authentication is true).")),
    ("AE title of 17 characters", [(f"{DIMSE}.aet", "A" * 17)], f"{DIMSE}.aet: {AE}"),
    ("AE title with backslash", [(f"{DIMSE}.calling-aet", "GW\\1")], f"{DIMSE}.calling-aet: {AE}"),
    ("AE title with control char", [(f"{DIMSE}.aet", "PA\tCS")], f"{DIMSE}.aet: {AE}"),
    ("AE title of spaces", [(f"{DIMSE}.aet", "    ")], f"{DIMSE}.aet: {AE}"),
    ("retrieve method", [(f"{DIMSE}.retrieve-method", "C-STORE")],
     f"{DIMSE}.retrieve-method: Must be one of: C-GET, C-MOVE."),
    ("max associations", [(f"{DIMSE}.max-associations", 0)],
     f"{DIMSE}.max-associations: Must be greater than or equal to 1."),
    ("connector id with a space", [(f"{C}.pacs 1", {"type": "DB"})],
     f"{C}.pacs 1: Not a valid id: letters, digits, '-' and '_' only."),
    ("unknown criterion", [(f"{C}.db.search-criteria", {"deactivated": "PATIENT_NAME"})],
     (f"{C}.db.search-criteria.deactivated: Unknown criterion; expected any of: "
     "SOP_INSTANCE_UID, SERIE_INSTANCE_UID, STUDY_INSTANCE_UID, STUDY_ACCESSION_NUMBER, "
     "PATIENT_ID")),
    ("bad override tag", [(f"{C}.db.weasis", {"manifest": {"overrideDicomTags": "PatientID, Nope"}})],
     (f"{C}.db.weasis.manifest.overrideDicomTags: "
     "Not a DICOM tag (0xGGGGEEEE, GGGGEEEE or a keyword) at item 1")),
    ("header injection", [(f"{C}.db.weasis", {"manifest": {"httpTags": {"X-A": "a\r\nX-B: b"}}})],
     (f"{C}.db.weasis.manifest.httpTags.X-A: "
     "Not a valid HTTP header value (text without control characters).")),
    ("compression rate", [(f"{C}.db.weasis", {"manifest": {"compressionRate": 101}})],
     (f"{C}.db.weasis.manifest.compressionRate: "
     "Must be greater than or equal to 0 and less than or equal to 100.")),
    ("transfer syntax", [(f"{C}.db.weasis", {"manifest": {"transfer-syntax-uid": "jpeg"}})],
     f"{C}.db.weasis.manifest.transfer-syntax-uid: Not a UID (PS3.5 9.1) or '*'."),
    ("zero timeout", [(f"{C}.db.timeouts", {"read": 0})],
     f"{C}.db.timeouts.read: Must be greater than 0."),
    ("level limit", [("connector.dicom-web-level-limit", "IMAGE")],
     "connector.dicom-web-level-limit: Must be one of: STUDY, SERIE."),
    ("grant type", [("oidc.keycloak.grant-type", "authorization_code")],
     "oidc.keycloak.grant-type: Only client_credentials is supported."),
    ("token url", [("oidc.keycloak.token-url", "idp/token")],
     "oidc.keycloak.token-url: Not a valid http(s) URL (scheme and host; no query or fragment)."),
    ("port twice", [(f"{WADO_AUTH}.basic.server.url", "http://127.0.0.1:8042")],
     (f"{WADO_AUTH}.basic.server.url: "
     "With `port` set, url is scheme and host only (path goes in context).")),
    ("block not a mapping", [(f"{C}.db.db-connector.query", "select 1")],
     f"{C}.db.db-connector.query: Not a mapping of keys."),
    ("no connector", [("connector", None)],
     "connector.config: At least one connector is required (or set gateway.demo-archive)."),
    ("bad base64", [(f"{C}.db.db-connector.password", "{base64}not base64!${DB_PW}")],
     (f"{C}.db.db-connector.password: "
     "Not valid {base64} text: standard, padded base64 of UTF-8 text expected.")),
    ("unknown JDBC scheme", [(f"{DB}.uri", "jdbc:h2:mem:pacs")],
     (f"{DB}.uri: Unsupported JDBC URL (supported: jdbc:postgresql, jdbc:mysql, jdbc:mariadb, "
      "jdbc:sqlserver, jdbc:oracle, jdbc:sqlite).")),
    ("unknown database", [(f"{DB}.uri", "mongodb://127.0.0.1/pacs")],
     (f"{DB}.uri: Unsupported database in the uri (supported: postgresql, mysql, mariadb, "
      "mssql, oracle, sqlite).")),
    ("uri with a bad port and a password", [(f"{DB}.uri", "postgresql://u:${DB_PW}@h:x1/pacs")],
     f"{DB}.uri: The database uri has an invalid port."),
    ("driver of another database",
     [(f"{DB}.uri", "jdbc:postgresql://127.0.0.1/pacs"), (f"{DB}.driver", "com.mysql.cj.jdbc.Driver")],
     f"{DB}.driver: The driver is for mysql, but the uri is a postgresql URL."),
    ("unknown driver class", [(f"{DB}.driver", "com.example.Driver")],
     (f"{DB}.driver: Unknown JDBC driver class (known: org.postgresql.Driver, "
      "com.mysql.cj.jdbc.Driver, com.mysql.jdbc.Driver, org.mariadb.jdbc.Driver, "
      "com.microsoft.sqlserver.jdbc.SQLServerDriver, oracle.jdbc.OracleDriver, "
      "oracle.jdbc.driver.OracleDriver, org.sqlite.JDBC).")),
    ("table-qualified file-path column", [(f"{DB}.query.file-path-column", "i.path")],
     (f"{DB}.query.file-path-column: "
      "Not a label of the select (a column alias such as file_path, not table-qualified).")),
    ("unknown wado protocol", [(f"{DB}.wado", {"protocol": "DIMSE", "authentication": NONE_AUTH})],
     f"{DB}.wado.protocol: Must be one of: WADO-URI, WADO-RS."),
    ("protocol outside a DB connector", [(f"{WADO_AUTH[:-len('.authentication')]}.protocol",
                                          "WADO-RS")],
     f"{C}.dimse.dicom-connector.wado.protocol: Unknown key."),
]


@pytest.mark.parametrize(
    ("changes", "expected"), [(c, e) for _, c, e in ERROR_CASES], ids=[n for n, _, _ in ERROR_CASES]
)
def test_error_names_the_key_path(changes: list[tuple[str, Any]], expected: str) -> None:
    data = base()
    for path, value in changes:
        change(data, path, value if value is DELETE else copy.deepcopy(value))
    assert errors_of(data) == [expected]


def test_several_errors_give_several_lines() -> None:
    data = base()
    change(data, f"{DIMSE}.port", "x")
    change(data, f"{DIMSE}.aet", "")
    change(data, f"{C}.db.db-connector.query.select", None)
    change(data, "gateway.max-results", 0)
    assert sorted(errors_of(data)) == sorted([
        f"{DIMSE}.port: Not a valid integer.",
        f"{DIMSE}.aet: {MISSING}",
        f"{C}.db.db-connector.query.select: {MISSING}",
        "gateway.max-results: Must be greater than or equal to 1.",
    ])


def test_secret_in_a_wrong_place_is_not_echoed() -> None:
    """A secret value that fails validation is reported by key path only."""
    data = change(base(), f"{DIMSE}.port", "${DB_PW}")
    change(data, f"{DIMSE}.host", ["${BASIC_PW}"])
    change(data, "oidc.keycloak.scope", {"${OIDC_SECRET}": 1})
    assert sorted(errors_of(data)) == [
        f"{DIMSE}.host: Not a valid string.",
        f"{DIMSE}.port: Not a valid integer.",
        "oidc.keycloak.scope: Not a scope string or a list of scopes.",
    ]


def test_yaml_syntax_error_does_not_quote_the_line(tmp_path: Path) -> None:
    path = tmp_path / "gateway.yml"
    path.write_text("oidc:\n  kc:\n    client-secret: [Db-Secret-4711\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(path, {})
    assert "Db-Secret-4711" not in str(caught.value)
    assert str(caught.value).startswith(f"{path}: line ")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(tmp_path / "absent.yml", {})
    assert str(caught.value).startswith(f"{tmp_path / 'absent.yml'}: cannot read the file")


def test_viewer_hub_spring_keys_are_rejected() -> None:
    data = base()
    data["spring"] = {"security": {}}
    assert errors_of(data) == ["spring: Unknown key."]


# ---------------------------------------------------------------------------------------------
# ${VAR} substitution


def test_substitution_forms() -> None:
    data = base()
    change(data, f"{DIMSE}.host", "${PACS_HOST:-127.0.0.1}")
    change(data, f"{DIMSE}.port", "${PACS_PORT}")
    change(data, f"{DIMSE}.aet", "${AET_PREFIX:-PA}${AET_SUFFIX:-CS}")
    change(data, f"{C}.db.db-connector.query.select", "select '$${literal}' from t where 1=1")
    change(data, f"{C}.db.search-criteria", {"deactivated": ["${CRITERION}"]})
    settings = load(data, PACS_PORT="4242", AET_SUFFIX="", CRITERION="PATIENT_ID")
    dimse = settings.connector("dimse").dicom.dimse  # type: ignore[union-attr]
    assert (dimse.host, dimse.port, dimse.aet) == ("127.0.0.1", 4242, "PACS")
    db = settings.connector("db")
    assert db.db.query.select == "select '${literal}' from t where 1=1"  # type: ignore[union-attr]
    assert db.deactivated == frozenset({"PATIENT_ID"})
    assert settings.oidc_client("keycloak").client_secret == SECRETS["OIDC_SECRET"]


def test_environ_defaults_to_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    assert load_settings_from_dict(base()).oidc[0].client_secret == SECRETS["OIDC_SECRET"]


def test_missing_variable_names_key_and_variable() -> None:
    data = base()
    env = {k: v for k, v in SECRETS.items() if k != "OIDC_SECRET"}
    change(data, "oidc.keycloak.client-secret", "${OIDC_SECRET}")
    change(data, f"{DIMSE}.host", "${Db-Secret-4711")
    with pytest.raises(ConfigError) as caught:
        load_settings_from_dict(data, env)
    assert caught.value.errors == (
        ("oidc.keycloak.client-secret", "Environment variable OIDC_SECRET is not set."),
        (f"{DIMSE}.host", "Malformed ${...} reference (write $${ for a literal ${)."),
    )
    for secret in SECRETS.values():
        assert secret not in str(caught.value)


def test_keys_are_not_substituted() -> None:
    data = change(base(), "connector.config.${ID}", {"type": "DB"})
    assert errors_of(data, ID="x") == [
        f"{C}.${{ID}}: Not a valid id: letters, digits, '-' and '_' only."]


# ---------------------------------------------------------------------------------------------
# {base64} secrets


def b64(text: str) -> str:
    return "{base64}" + base64.b64encode(text.encode("utf-8")).decode("ascii")


@pytest.mark.parametrize("path", [
    f"{C}.db.db-connector.password",
    f"{WADO_AUTH}.basic.password",
    f"{DIMSE}.keyStore.password",
    f"{DIMSE}.keyStore.keyStorePassword",
    f"{DIMSE}.truststore.password",
    "oidc.keycloak.client-secret",
])
def test_base64_secrets_are_decoded(path: str) -> None:
    data = base()
    change(data, f"{DIMSE}.keyStore", {"url": "client.pem"})
    change(data, f"{DIMSE}.truststore", {"url": "ca.pem"})
    change(data, path, b64("Pässwörd:1"))
    settings = load(data)
    dimse = settings.connector("dimse").dicom
    assert dimse is not None and dimse.wado is not None and dimse.wado.basic is not None
    key_store, trust_store = dimse.dimse.key_store, dimse.dimse.trust_store
    assert key_store is not None and trust_store is not None
    found = {
        f"{C}.db.db-connector.password": settings.connector("db").db.password,  # type: ignore[union-attr]
        f"{WADO_AUTH}.basic.password": dimse.wado.basic.password,
        f"{DIMSE}.keyStore.password": key_store.password,
        f"{DIMSE}.keyStore.keyStorePassword": key_store.key_store_password,
        f"{DIMSE}.truststore.password": trust_store.password,
        "oidc.keycloak.client-secret": settings.oidc_client("keycloak").client_secret,
    }
    assert found[path] == "Pässwörd:1"


def test_base64_after_substitution_and_literal_values() -> None:
    data = change(base(), f"{C}.db.db-connector.password", "{base64}${DB_PW_B64}")
    change(data, f"{WADO_AUTH}.basic.password", "base64:not-a-prefix")
    encoded = base64.b64encode(b"from-env").decode("ascii")
    settings = load(data, DB_PW_B64=encoded)
    assert settings.connector("db").db.password == "from-env"  # type: ignore[union-attr]
    wado = settings.connector("dimse").dicom.wado  # type: ignore[union-attr]
    assert wado.basic.password == "base64:not-a-prefix"  # type: ignore[union-attr]


def test_key_store_password_defaults_to_password() -> None:
    data = change(base(), f"{DIMSE}.keyStore", {"url": "c.pem", "password": "p"})
    key_store = load(data).connector("dimse").dicom.dimse.key_store  # type: ignore[union-attr]
    assert key_store == KeyStore(url="c.pem", type="PEM", password="p", key_store_password="p")


# ---------------------------------------------------------------------------------------------
# connector.default


@pytest.mark.parametrize(("default", "expected"), [
    (["web", "db"], ("web", "db")),
    ("dimse, db", ("dimse", "db")),
    ("web,web , db", ("web", "db")),
    (DELETE, ("db", "dimse", "web")),
    ("", ("db", "dimse", "web")),
    ([], ("db", "dimse", "web")),
])
def test_default_connectors(default: Any, expected: tuple[str, ...]) -> None:
    data = base()
    if default is not DELETE:
        change(data, "connector.default", default)
    assert load(data).default == expected


def test_default_with_unknown_id_uses_all_and_warns(caplog: pytest.LogCaptureFixture) -> None:
    data = change(base(), "connector.default", "web, pacs9")
    with caplog.at_level(logging.INFO, logger="gateway.config"):
        settings = load(data)
    assert settings.default == ("db", "dimse", "web")
    warnings = [r for r in caplog.records
                if r.name == "gateway.config" and r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "pacs9" in warnings[0].getMessage()
    assert "db, dimse, web" in warnings[0].getMessage()


def test_demo_archive_allows_no_connector() -> None:
    settings = load({"gateway": {"demo-archive": {"directory": "var/demo"}}})
    assert settings.connectors == () and settings.default == ()
    assert settings.gateway.demo_archive is not None
    assert settings.gateway.demo_archive.directory == "var/demo"


# ---------------------------------------------------------------------------------------------
# Timeouts, manifest options, AE titles


def test_timeouts_inherit_key_by_key() -> None:
    data = change(base(), "gateway.timeouts", {"connect": 2, "dimse": 45})
    change(data, f"{C}.dimse.timeouts", {"dimse": 90, "acse": 3.5})
    settings = load(data)
    assert settings.gateway.timeouts == Timeouts(
        connect=2, read=30, request=60, acse=10, dimse=45, network=60)
    assert settings.connector("dimse").timeouts == Timeouts(
        connect=2, read=30, request=60, acse=3.5, dimse=90, network=60)
    assert settings.connector("db").timeouts == settings.gateway.timeouts


def test_default_timeouts() -> None:
    assert load(base()).connector("web").timeouts == Timeouts(
        connect=5, read=30, request=60, acse=10, dimse=30, network=60)


def test_override_tags_are_normalised() -> None:
    # PS3.6: PatientID (0010,0020), PatientName (0010,0010), PatientBirthDate (0010,0030),
    # AccessionNumber (0008,0050).
    data = change(base(), f"{C}.db.weasis", {"manifest": {"overrideDicomTags": [
        "PatientID", 0x00100010, "00100030", "(0008,0050)", "0x00100020"]}})
    manifest = load(data).connector("db").weasis
    assert manifest.override_dicom_tags == (
        "0x00100020", "0x00100010", "0x00100030", "0x00080050")


def test_ae_title_of_16_characters_is_accepted() -> None:
    data = change(base(), f"{DIMSE}.aet", " ABCDEFGHIJKLMNOP ")
    assert load(data).connector("dimse").dicom.dimse.aet == "ABCDEFGHIJKLMNOP"  # type: ignore[union-attr]


# ---------------------------------------------------------------------------------------------
# Where the file comes from; application-oidc.yml


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


MINIMAL = """
connector:
  config:
    web:
      type: DICOM_WEB
      dicom-web-connector:
        qido-rs:
          authentication:
            type: OAUTH2
            oauth2: {oidc-id: kc, server: {url: http://127.0.0.1}}
"""
OIDC = "oidc:\n  kc: {client-id: a, client-secret: b, token-url: http://127.0.0.1/t}\n"


def test_path_from_environment_then_default(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    _write(tmp_path / "elsewhere" / "gw.yml", MINIMAL.replace("web:", "from-env:") + OIDC)
    _write(tmp_path / "config" / "gateway.yml", MINIMAL + OIDC)
    monkeypatch.chdir(tmp_path)
    env = {"GATEWAY_CONFIG": str(tmp_path / "elsewhere" / "gw.yml")}
    assert load_settings(environ=env).connectors[0].id == "from-env"
    assert load_settings(environ={}).connectors[0].id == "web"


def test_oidc_file_is_merged(tmp_path: Path) -> None:
    main = _write(tmp_path / "gateway.yml", MINIMAL)
    _write(tmp_path / "application-oidc.yml", OIDC.replace("b,", "'${KC_SECRET}',"))
    settings = load_settings(main, {"KC_SECRET": "kc-secret"})
    assert settings.oidc == (OidcClient(id="kc", client_id="a", client_secret="kc-secret",
                                        token_url="http://127.0.0.1/t"),)


def test_oidc_file_errors_name_the_file(tmp_path: Path) -> None:
    main = _write(tmp_path / "gateway.yml", MINIMAL + OIDC)
    _write(tmp_path / "application-oidc.yml", "oidc:\n  kc: {client-id: a}\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(main, {})
    assert caught.value.errors == (
        ("application-oidc.yml: oidc.kc.client-secret", MISSING),
        ("application-oidc.yml: oidc.kc.token-url", MISSING),
    )


def test_oidc_id_in_both_files_is_an_error(tmp_path: Path) -> None:
    main = _write(tmp_path / "gateway.yml", MINIMAL + OIDC)
    _write(tmp_path / "application-oidc.yml", OIDC)
    with pytest.raises(ConfigError) as caught:
        load_settings(main, {})
    assert caught.value.errors == (("oidc.kc", "Also defined in application-oidc.yml."),)


# ---------------------------------------------------------------------------------------------
# gateway.storage-scp: the storage SCP that C-MOVE retrievals send to

SCP = "gateway.storage-scp"
MOVE = f"{DIMSE}.retrieve-method"


def test_storage_scp_block_and_defaults() -> None:
    data = change(base(), SCP, {"aet": " GATEWAY ", "port": 11112})
    assert load(data).gateway.storage_scp == StorageScpOptions(
        aet="GATEWAY", port=11112, host="127.0.0.1", relay_dir=None)  # PS3.5 6.2: spaces trimmed
    data = change(data, SCP, {"aet": "GW", "port": "104", "host": "::",
                              "relay-dir": "/run/gateway"})
    assert load(data).gateway.storage_scp == StorageScpOptions(
        aet="GW", port=104, host="::", relay_dir="/run/gateway")
    assert load(base()).gateway.storage_scp is None


def test_example_config_has_a_storage_scp() -> None:
    env = {"DB_PASSWORD": "db-pw", "PACS_WEB_PASSWORD": "web-pw", "OIDC_CLIENT_SECRET": "cs"}
    assert load_settings(EXAMPLE, env).gateway.storage_scp == StorageScpOptions(
        aet="GATEWAY", port=11112, host="127.0.0.1")


def test_c_move_needs_a_storage_scp() -> None:
    assert errors_of(change(base(), MOVE, "C-MOVE")) == [
        f"{MOVE}: C-MOVE needs gateway.storage-scp (the storage SCP the PACS sends the objects "
        "to)."]
    data = change(change(base(), MOVE, "c-move"), SCP, {"aet": "GATEWAY", "port": 11112})
    assert load(data).connector("dimse").dicom.dimse.retrieve_method == "C-MOVE"  # type: ignore[union-attr]


@pytest.mark.parametrize(("block", "expected"), [
    ({"port": 11112}, f"{SCP}.aet: {MISSING}"),
    ({"aet": "GATEWAY"}, f"{SCP}.port: {MISSING}"),
    ({"aet": "GATE\\WAY", "port": 11112}, f"{SCP}.aet: {AE}"),
    ({"aet": "A" * 17, "port": 11112}, f"{SCP}.aet: {AE}"),
    ({"aet": "GATEWAY", "port": 0}, f"{SCP}.port: {PORT_RANGE}"),
    ({"aet": "GATEWAY", "port": 65536}, f"{SCP}.port: {PORT_RANGE}"),
    ({"aet": "GATEWAY", "port": 11112, "host": "not a host"},
     f"{SCP}.host: Not an IP address or a host name."),
    ({"aet": "GATEWAY", "port": 11112, "relay-dir": "run/gw"},
     f"{SCP}.relay-dir: Must be an absolute path."),
    ({"aet": "GATEWAY", "port": 11112, "relay-dir": "/" + "d" * 87},
     f"{SCP}.relay-dir: Too long for a local socket path: at most 87 bytes."),
    ({"aet": "GATEWAY", "port": 11112, "ae-title": "X"}, f"{SCP}.ae-title: Unknown key."),
])
def test_storage_scp_errors_name_the_key(block: dict[str, Any], expected: str) -> None:
    assert errors_of(change(base(), SCP, block)) == [expected]


# -- Weasis direct mode needs the archive's own endpoint ---------------------------------------

DIRECT_WADO = {"authentication": {"type": "BASIC", "basic": {
    "login": "w", "password": "p", "server": {"url": "http://127.0.0.1", "context": "/wado"}}}}


@pytest.mark.parametrize(
    ("connector", "wado", "message"),
    [
        ("db", None, "Needs db-connector.wado "),
        ("db", DIRECT_WADO | {"protocol": "WADO-RS"}, "Needs db-connector.wado with protocol WADO-URI"),
    ],
)
def test_weasis_direct_mode_needs_a_wado_endpoint(connector: str, wado: Any, message: str) -> None:
    data = change(base(), f"connector.config.{connector}.weasis.direct", True)
    if wado is not None:
        change(data, f"connector.config.{connector}.db-connector.wado", wado)
    errors = errors_of(data)
    assert len(errors) == 1
    assert errors[0].startswith(f"connector.config.{connector}.weasis.direct: {message}")


def test_weasis_direct_mode_with_a_wado_endpoint_loads() -> None:
    data = change(base(), "connector.config.dimse.weasis.direct", True)  # base() has its wado
    assert load(data).connector("dimse").weasis.direct is True
    assert load(base()).connector("dimse").weasis.direct is False
    # a DICOM_WEB connector without wado-rs retrieves, and is reached directly, through qido-rs
    web = load(change(base(), "connector.config.web.weasis.direct", True)).connector("web")
    assert web.dicom_web is not None and web.dicom_web.wado_rs == web.dicom_web.qido_rs
